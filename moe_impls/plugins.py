"""Third-party implementations in the same harness as the built-in rows.

The protocol:
    factory(cfg: MoEConfig, weights: MoEWeights) -> nn.Module
        cfg      the layer's shape and routing settings (frozen)
        weights  the shared container: router.weight [E, D], experts.gate_up_proj [E, 2F, D] (SwiGLU;
                 up_proj [E, F, D] for GELU), experts.down_proj [E, D, F]. Use these tensors, do not copy
                 them: every row of a point runs on the same parameters, and train mode checks their grads.
    module(x [..., D]) -> y [..., D]  or  (y, RoutingRecord)
        y in x's dtype and shape. The routing record is optional: without one the row's load-balance
        columns come from the reference's routing and `computed_rows` stays null.
The output (and, in train mode, the input gradient) is checked against the reference like any built-in row.

Found two ways, both by name:
    an entry point in group `moe_bench.impls` of an installed distribution: name = "package.module:factory"
    a `package.module:factory` string, e.g. `moe-bench run cpu --impl mypkg.moe:make_layer`
The factory is imported when a point first builds it, so a broken plug-in fails that row, not the sweep.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from moe_impls.registry import Impl, Resolver, register_resolver

if TYPE_CHECKING:
    from torch import nn

    from moe_impls.weights import MoEWeights

GROUP = "moe_bench.impls"
_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    """Installed plug-ins by name (the metadata is read; nothing is imported)."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=GROUP)}


def entry_point_names() -> list[str]:
    return sorted(entry_points())


def is_import_path(name: str) -> bool:
    return _PATH.fullmatch(name) is not None


def load_import_path(path: str) -> Callable:
    module_name, _, attr = path.partition(":")
    obj = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def factory(name: str) -> Callable[[MoEWeights], nn.Module] | None:
    """A builder `weights -> module` for a plug-in name, or None when the name is neither form."""
    if is_import_path(name):
        return _Builder(name, lambda: load_import_path(name))
    ep = entry_points().get(name)
    return _Builder(name, ep.load) if ep is not None else None


def resolve_plugin(name: str) -> Impl | None:
    build = factory(name)
    return Impl(name, build, "plugin") if build is not None else None


class _Builder:
    """Imports the plug-in on first use and checks what its factory returns."""

    def __init__(self, name: str, load: Callable[[], Callable]) -> None:
        self.name, self.load = name, load

    def __call__(self, weights: MoEWeights) -> nn.Module:
        from torch import nn

        make = self.load()
        if not callable(make):
            raise TypeError(f"plug-in {self.name!r}: expected a factory(cfg, weights), got {type(make).__name__}")
        module = make(weights.cfg, weights)
        if not isinstance(module, nn.Module):
            raise TypeError(f"plug-in {self.name!r}: factory returned {type(module).__name__}, expected nn.Module")
        return module


register_resolver(Resolver(resolve_plugin, lambda: [*entry_point_names(), "module.path:factory"]))
