"""Timing the expert-parallel layer's stages from outside: the instrument calls them one by one between clock marks.

The layer (`moe_impls.expert_parallel.ExpertParallelMoE`) keeps no timing state; its forward is the composition
of the four stage methods called here in the same order, so a timed forward computes what a plain one does.
On CUDA the marks are CUDA events (one synchronize when read); on the CPU, perf_counter, where the collectives
return when done.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from moe_impls.expert_parallel import EPTraffic, ExpertParallelMoE
from suites.schema import STAGES


class _StageClock:
    """Stage boundaries: CUDA events on CUDA (read after one synchronize), perf_counter on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def seconds(self) -> list[float]:
        if self.cuda:
            self.marks[-1].synchronize()
            return [a.elapsed_time(b) / 1e3 for a, b in zip(self.marks, self.marks[1:])]
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


@dataclass(frozen=True)
class TimedForward:
    """One forward on one rank: seconds per stage (keys `STAGES`) and what the rank moved.

    Collectives wait for the slowest peer, so load imbalance and rank skew show up in dispatch and combine.
    """

    stage_s: dict[str, float]
    traffic: EPTraffic

    @property
    def total_s(self) -> float:
        return sum(self.stage_s.values())


def timed_forward(layer: ExpertParallelMoE, x_TD: torch.Tensor) -> TimedForward:
    """Run `layer`'s forward on x_TD stage by stage, with a clock mark at each stage boundary."""
    clock = _StageClock(x_TD.device)
    clock.mark()
    x_TD, routing = layer.route(x_TD)
    clock.mark()
    x_MD, sent = layer.dispatch(x_TD, routing)
    clock.mark()
    out_MD = layer.expert_outputs(x_MD, sent)
    clock.mark()
    layer.combine_exchange(out_MD, sent)
    clock.mark()
    return TimedForward(dict(zip(STAGES, clock.seconds(), strict=True)), sent.traffic)
