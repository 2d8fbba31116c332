"""Implementations by name, so suites and the CLI can pick them from a string.

`get(name)` returns a registered `MoELayer` class. `resolve(name)` accepts every name a suite may run and
returns an `Impl`, a factory `weights -> nn.Module`:
    loop, sort_group, hf_grouped_mm, ...     registered classes (the transformers peers when it is installed)
    <impl>+compile                           `impl` under torch.compile (moe_impls/compiled.py)
    a plug-in entry point's name             group `moe_bench.impls` (moe_impls/plugins.py)
    package.module:factory                   a plug-in named by its import path
The registry knows no family of implementations: each registers itself when `moe_impls` imports it, a class by
`register`, a name it cannot run here by `register_unavailable` (with the reason), and names it resolves on
demand by `register_resolver`. A plug-in is imported only when its factory is first called, so an import
error belongs to the point that hit it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import torch
    from torch import nn

    from moe_impls.config import MoEConfig
    from moe_impls.layer import MoELayer
    from moe_impls.weights import MoEWeights

_IMPLS: dict[str, type[MoELayer]] = {}
_UNAVAILABLE: dict[str, str] = {}  # name -> why it cannot run here
_RESOLVERS: list[Resolver] = []
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


@dataclass(frozen=True)
class Impl:
    """A resolved name: `impl(weights)` builds the module; `layer_cls` answers what it cannot run or would cost."""

    name: str
    build: Callable[[MoEWeights], nn.Module]
    kind: str  # 'builtin', 'plugin', each with '+compile' when compiled
    layer_cls: type[MoELayer] | None = None
    compiled: bool = False

    def __call__(self, weights: MoEWeights) -> nn.Module:
        return self.build(weights)

    def unsupported(self, cfg: MoEConfig) -> str | None:
        """Why this implementation cannot run `cfg` at all (the row is skipped), or None."""
        return self.layer_cls.unsupported(cfg) if self.layer_cls is not None else None

    def predicted_bytes(self, cfg: MoEConfig, tokens: int, dtype: torch.dtype, mode: str) -> int | None:
        """Bytes one call allocates beyond the weights and input, where the footprint is known; else None."""
        return self.layer_cls.predicted_bytes(cfg, tokens, dtype, mode) if self.layer_cls is not None else None


@dataclass(frozen=True)
class Resolver:
    """Names a family resolves on demand (compiled variants, plug-ins), which the registry cannot list ahead."""

    resolve: Callable[[str], Impl | None]  # None: not a name of this family
    known: Callable[[], list[str]]  # the names or forms it accepts, for the unknown-name error


def register_unavailable(name: str, why: str) -> None:
    """`name` is an implementation that cannot run here: resolving it raises `why` instead of 'unknown'."""
    _UNAVAILABLE[name] = why


def register_resolver(resolver: Resolver) -> None:
    _RESOLVERS.append(resolver)


def resolve(name: str) -> Impl:
    """The `Impl` for any runnable name; KeyError (one line, with the known names) for anything else."""
    if name in _IMPLS:
        return Impl(name, _IMPLS[name], "builtin", _IMPLS[name])
    if name in _UNAVAILABLE:
        raise KeyError(f"implementation {name!r}: {_UNAVAILABLE[name]}")
    for resolver in _RESOLVERS:
        impl = resolver.resolve(name)
        if impl is not None:
            return impl
    *known, last = names() + [form for resolver in _RESOLVERS for form in resolver.known()]
    raise KeyError(f"unknown implementation {name!r}; known: {', '.join(known)}, or {last}")


def is_known(name: str) -> bool:
    try:
        resolve(name)
    except KeyError:
        return False
    return True
