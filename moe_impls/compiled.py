"""`<impl>+compile`: any implementation under torch.compile, over the same shared weights.

Mode "default" (inductor; on CPU it builds C++ with the machine's compiler). Not "reduce-overhead": that mode
captures CUDA graphs itself, which the timer can already do, and it cannot hold the host syncs that loop and
padded make. dynamic=None, torch's automatic dynamic shapes: the first token count compiles a static graph,
the second recompiles once with the token count symbolic, and later counts reuse it (a count of 1 is
specialised by torch and compiles its own graph). `.tolist()` and `int(...)` host syncs (loop, padded, the
per-segment grouped_mm) are graph breaks, not errors. The routing record returned by the layer passes
through Dynamo unchanged.
On a CPU shared with other busy processes, compiled rows can be far slower than their eager twins: each
inductor kernel is an OpenMP parallel region, and its threads wait at the barrier for a descheduled peer.
OMP_WAIT_POLICY=PASSIVE in the environment (set before Python starts) made that go away in our runs.
"""

from __future__ import annotations

import torch
from torch import nn

from moe_impls.registry import Impl, Resolver, register_resolver, resolve

COMPILE_SUFFIX = "+compile"
COMPILE_MODE = "default"
# Every implementation shares MoELayer.forward, so one code object collects a graph per implementation,
# mode and shape family; torch's default of 8 would silently fall back to eager part-way through a sweep.
RECOMPILE_LIMIT = 256


class CompiledLayer(nn.Module):
    """Holds the eager layer (its parameters are the shared ones) and calls its compiled twin."""

    def __init__(self, eager: nn.Module, mode: str = COMPILE_MODE) -> None:
        super().__init__()
        self.eager = eager
        self.mode = mode
        # Kept outside the module tree: `torch.compile` wraps `eager` itself, whose parameters are already ours.
        object.__setattr__(self, "_compiled", torch.compile(eager, mode=mode, dynamic=None))

    def forward(self, *args, **kwargs):
        return self._compiled(*args, **kwargs)


def compile_layer(eager: nn.Module, mode: str = COMPILE_MODE) -> CompiledLayer:
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, RECOMPILE_LIMIT)
    config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 4 * RECOMPILE_LIMIT)
    config.fail_on_recompile_limit_hit = True  # an error row, never a silently eager "compiled" row
    return CompiledLayer(eager, mode)


def resolve_compiled(name: str) -> Impl | None:
    """`<impl>+compile` for any resolvable `impl`; None for a name without the suffix."""
    if not name.endswith(COMPILE_SUFFIX) or len(name) == len(COMPILE_SUFFIX):
        return None
    base = resolve(name[: -len(COMPILE_SUFFIX)])
    if base.compiled:
        raise KeyError(f"implementation {name!r}: compiled twice")
    return Impl(name, lambda w: compile_layer(base.build(w)), base.kind + COMPILE_SUFFIX, base.layer_cls, True)


register_resolver(Resolver(resolve_compiled, lambda: [f"<impl>{COMPILE_SUFFIX}"]))
