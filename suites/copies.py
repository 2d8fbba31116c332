"""Cold copies: on CPU in cold mode, each row rotates over copies of its weights and input whose other copies
(with the eviction reads that make up for copies that do not fit, suites/cache.py) span twice the last-level
cache, so every timed call finds its data out of cache (suites/timing.py). MoE rows share the weights' copies;
each dense baseline has its own. Elsewhere a row is timed on its checked layer."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import cached_property

import torch

import moe_impls
from moe_impls import MoEWeights
from suites.cache import ColdPlan, Eviction, plan_copies
from suites.calls import call_for_timing
from suites.checks import CheckedRow, PointInputs
from suites.timing import RowCalls
from suites.timing_settings import TimingSettings


@dataclass(frozen=True)
class CopyBudget:
    """What sizes the copies: the device, the suite's [timing] table (cache state, cold_max_mb) and the LLC."""

    device: torch.device
    timing: TimingSettings
    llc_bytes: int

    @property
    def cold_cpu(self) -> bool:
        return self.timing.cache == "cold" and self.device.type == "cpu"

    @property
    def max_bytes(self) -> int:
        return int(self.timing.cold_max_mb * 2**20)

    @cached_property
    def eviction(self) -> Eviction:
        """One eviction buffer for the worker's life, shared by every row that needs reads."""
        return Eviction(self.llc_bytes)


def build_copies(budget: CopyBudget, inputs: PointInputs, pending: list[CheckedRow]) -> list:
    """Gives every row its RowCalls (and its cache_copies / cache_read_mb / cache_note columns); returns what
    keeps the copies alive until the timing is over."""
    x, grad_out = inputs.x, inputs.grad_out
    per_pool = budget.max_bytes // max(len({r.pool for r in pending}), 1)
    moe_rows = [r for r in pending if r.pool == "moe"]
    moe_copies, moe_plan = [inputs.weights], ColdPlan(1)
    if budget.cold_cpu and moe_rows:
        moe_copies, moe_plan = _moe_copies(budget, inputs, min(r.touched for r in moe_rows), per_pool)
    keep: list = []
    for r in pending:
        layers, plan, cache_note = r.layers, ColdPlan(1), None
        if budget.cold_cpu and r.pool == "moe":
            impl = moe_impls.resolve(r.name)
            if impl.compiled:
                cache_note = "warm weights: a compiled row is timed on one copy (copies would recompile)"
            else:
                layers, plan = [r.layers[0]] + [impl(w) for w in moe_copies[1:]], moe_plan
        elif budget.cold_cpu:
            plan = plan_copies(r.weight_bytes + _io_bytes(inputs), budget.llc_bytes, per_pool)
            layers = [r.layers[0]] + [copy.deepcopy(r.layers[0]) for _ in range(plan.copies - 1)]
        copied = [(x, grad_out)] + [(x.clone(), grad_out.clone()) for _ in layers[1:]]
        calls, resets = zip(*(call_for_timing(layer, xi, gi, inputs.mode) for layer, (xi, gi) in zip(layers, copied)))
        r.calls = RowCalls(
            calls,
            resets,
            pool=r.pool if len(layers) > 1 else r.name,
            graph_ok=r.graph_ok,
            before=budget.eviction.reader(plan.read_bytes),
        )
        r.columns.update(cache_copies=len(layers), cache_read_mb=plan.read_bytes / 2**20, cache_note=cache_note)
        keep.append((layers, copied))
    return keep + moe_copies


def _moe_copies(
    budget: CopyBudget, inputs: PointInputs, touched: int, pool_bytes: int
) -> tuple[list[MoEWeights], ColdPlan]:
    """The weights and their copies, sized by what a call reads (`touched`: the experts its routing hits), not
    by what is resident: at one token a call reads 2 of 8 experts, and copies sized by all 8 would leave those
    2 in cache. The pool's byte budget is scaled the same way."""
    weights = inputs.weights
    plan = plan_copies(touched + _io_bytes(inputs), budget.llc_bytes, pool_bytes * touched // weights.nbytes())
    return [weights] + [copy.deepcopy(weights) for _ in range(plan.copies - 1)], plan


def _io_bytes(inputs: PointInputs) -> int:
    """Bytes of the input a call reads, and of the output gradient in train mode."""
    x = inputs.x
    return x.numel() * x.element_size() * (2 if inputs.mode == "train" else 1)
