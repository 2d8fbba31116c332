"""Implementations by name, so suites and the CLI can pick them from a string."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from moe_impls.layer import MoELayer

_IMPLS: dict[str, type[MoELayer]] = {}
L = TypeVar("L", bound="type[MoELayer]")


def register(name: str) -> Callable[[L], L]:
    def add(cls: L) -> L:
        if name in _IMPLS:
            raise ValueError(f"implementation {name!r} is registered twice")
        cls.name = name
        _IMPLS[name] = cls
        return cls

    return add


def get(name: str) -> type[MoELayer]:
    try:
        return _IMPLS[name]
    except KeyError:
        raise KeyError(f"unknown implementation {name!r}; known: {', '.join(names())}") from None


def names() -> list[str]:
    return sorted(_IMPLS)
