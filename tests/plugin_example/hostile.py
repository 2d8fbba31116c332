"""Plug-ins that misbehave the ways a third-party implementation can, each on purpose (tests/adversarial).

Each factory follows the protocol in moe_impls/plugins.py and wraps the correct `sort_group` layer, so the
only thing wrong with a row is the misbehaviour named. The ones that fail late count calls: the runner's
check is the first call, so `after=1` misbehaves from the first timed call on.
"""

from __future__ import annotations

import os
import sys
import time

import torch
from torch import nn

import moe_impls
from moe_impls import MoEConfig, MoEWeights


class _Wrapped(nn.Module):
    def __init__(self, weights: MoEWeights) -> None:
        super().__init__()
        self.inner = moe_impls.get("sort_group")(weights)
        self.weights, self.calls = weights, 0

    def forward(self, x: torch.Tensor):
        self.calls += 1
        self.misbehave(x)
        return self.inner(x)

    def misbehave(self, x: torch.Tensor) -> None: ...


class OffByOnePercent(_Wrapped):
    def forward(self, x):
        y, routing = self.inner(x)
        return y * 1.01, routing


class Raises(_Wrapped):
    def misbehave(self, x):
        raise RuntimeError("kernel exploded\nsecond line")


class SysExit(_Wrapped):
    def misbehave(self, x):
        sys.exit(0)


class OsExit(_Wrapped):
    after = 0
    process_calls = 0  # over every instance: timing rotates over copies, each its own instance

    def misbehave(self, x):
        OsExit.process_calls += 1
        if OsExit.process_calls > self.after:
            os._exit(0)


class OsExitWhileTimed(OsExit):
    after = 3  # the check passes; the worker dies among the timed calls


class Hangs(_Wrapped):
    def misbehave(self, x):
        time.sleep(3600)


class MutatesWeights(_Wrapped):
    def misbehave(self, x):
        with torch.no_grad():
            self.weights.experts.down_proj.data.mul_(1.5)  # through .data: version counters do not see it


class CachesOutput(_Wrapped):
    """Right on the first call, then returns that answer whatever the input: a timed 'speed' of nothing."""

    def forward(self, x):
        if self.calls == 0:
            self.calls += 1
            self.cached = self.inner(x)
        return self.cached


class AllocatesTooMuch(_Wrapped):
    def misbehave(self, x):
        torch.empty(1 << 50, dtype=torch.uint8)  # 1 PiB: the CPU allocator refuses


def _factory(cls: type[_Wrapped]):
    def make(cfg: MoEConfig, weights: MoEWeights) -> nn.Module:
        return cls(weights)

    return make


off_by_one = _factory(OffByOnePercent)
raises = _factory(Raises)
sys_exit = _factory(SysExit)
os_exit = _factory(OsExit)
os_exit_while_timed = _factory(OsExitWhileTimed)
hangs = _factory(Hangs)
mutate = _factory(MutatesWeights)
cache = _factory(CachesOutput)
huge_alloc = _factory(AllocatesTooMuch)
