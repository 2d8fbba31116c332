"""`moe-bench run SUITE --plan`: what a run of the suite would do, predicted without running anything.

For every point and row: the predicted peak memory (analysis/footprint.py), the predicted time of one call
(the roofline of its FLOPs and bytes against a device profile, or its launch floor: a lower bound), whether
the runner would skip it and why (the same rule as the runner's: a call predicted to need more than
`MEMORY_HEADROOM` of what is free beside the point's weights), and the wall time the run would take under the
suite's [timing] protocol (an upper bound: every row times for its full budget).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import moe_impls
from analysis import flops, footprint
from analysis.devices import DeviceProfile
from moe_impls.routing import synthetic_expert_idx
from suites.checks import MEMORY_HEADROOM
from suites.suite_model import Point, Suite

CHECK_CALLS = 4  # untimed calls per row besides the timing: the check, memory, counters and the fresh recheck
STARTUP_S = 5.0  # the worker's start, the peaks and the canary (2.6 s measured on 2 CPU cores)


@dataclass(frozen=True)
class PlannedRow:
    point: Point
    impl: str
    peak_bytes: int | None  # weights, input and the call's own allocations; None when not predicted
    call_ms: float
    wall_s: float
    skip: str | None  # why the runner would not attempt the row


@dataclass(frozen=True)
class Plan:
    suite: Suite
    device: DeviceProfile
    rows: tuple[PlannedRow, ...]
    setup_s: float  # drawing every point's weights

    @property
    def wall_s(self) -> float:
        return STARTUP_S + self.setup_s + sum(r.wall_s for r in self.rows)


def max_load(point: Point) -> int:
    """The largest expert load of the point's routing: exact for a synthetic routing, expected for a router."""
    cfg = point.moe_config()
    if cfg.synthetic is not None:
        chosen = synthetic_expert_idx(point.tokens, cfg.num_experts, cfg.top_k, cfg.synthetic)
        load = int(torch.bincount(chosen.flatten(), minlength=cfg.num_experts).max())
    else:
        load = footprint.expected_max_load(point.tokens, cfg.num_experts, cfg.top_k)
    capacity = cfg.capacity(point.tokens)
    return load if capacity is None else min(load, capacity)


def _call(point: Point) -> footprint.Call:
    elem = torch.empty((), dtype=getattr(torch, point.dtype)).element_size()
    p = point
    return footprint.Call(
        p.d_model, p.d_ff, p.num_experts, p.top_k, p.activation, p.tokens, elem, p.mode == "train", max_load(p)
    )


def _row_work(point: Point, impl: str, call: footprint.Call) -> tuple[int, int, int]:
    """(weight bytes, FLOPs computed, bytes moved) of one call of the row."""
    cfg, b = point.moe_config(), call.elem_bytes
    if impl in footprint.DENSE_WIDTH:
        d_ff = footprint.DENSE_WIDTH[impl](call)
        weights = (call.width(d_ff) + d_ff) * call.d_model * b
        work = flops.dense_flops(cfg.d_model, d_ff, cfg.activation, point.tokens, point.mode)
        return weights, work, flops.min_bytes(weights, point.tokens, cfg.d_model, b, point.mode)
    weights = footprint.weight_grads(call) + cfg.num_experts * cfg.d_model * b
    rows = {"padded": cfg.num_experts * call.max_load, "dense_all": cfg.num_experts * point.tokens}
    computed = rows.get(impl, call.assignments)
    touched = min(cfg.num_experts, computed) * footprint.weight_grads(call) // cfg.num_experts
    moved = flops.min_bytes(touched, point.tokens, cfg.d_model, b, point.mode)
    return weights, flops.moe_flops(cfg, point.tokens, computed, point.mode), moved


def _row_wall_s(call_ms: float, suite: Suite, device: DeviceProfile) -> float:
    """The most a row takes under the [timing] protocol: warm-up, sampling to the budget (or the fewest
    samples), the untimed block re-entry calls, the checks, and the energy loop on a GPU."""
    s = suite.timing
    timed = max(s.budget_ms, s.min_reps * call_ms)
    block = max(1.0, min(64.0, s.block_ms / max(call_ms, 1e-6)))
    energy = max(s.energy_ms, call_ms) if device.name != "cpu" and s.energy_ms > 0 else 0.0
    return (max(s.warmup_ms, call_ms) + timed + timed / block + CHECK_CALLS * call_ms + energy) / 1e3


def _skip(point: Point, impl: str, peak: int | None, weights: int, moe_weights: int, device: DeviceProfile):
    """The runner's rule: the implementation cannot express the shape, or the call would not fit."""
    why = moe_impls.resolve(impl).unsupported(point.moe_config()) if impl not in footprint.DENSE_WIDTH else None
    if why or peak is None:
        return why
    free = device.memory_bytes - moe_weights - (weights if impl in footprint.DENSE_WIDTH else 0)
    if moe_weights > device.memory_bytes:
        return f"the point's weights ({moe_weights / 1e9:.3g} GB) exceed the {device.memory_bytes / 1e9:.3g} GB"
    if peak - weights > MEMORY_HEADROOM * free:
        return (
            f"predicted {(peak - weights) / 1e9:.3g} GB per call > {MEMORY_HEADROOM:.0%} of the "
            f"{free / 1e9:.3g} GB free beside the weights on {device.name}"
        )
    return None


def plan(suite: Suite, device: DeviceProfile) -> Plan:
    rows, setup_s, last_shape = [], 0.0, None
    for point in suite.points:
        call = _call(point)
        moe_weights = footprint.weight_grads(call) + point.num_experts * point.d_model * call.elem_bytes
        shape = (point.shape, point.d_model, point.d_ff, point.num_experts, point.dtype)
        if shape != last_shape:  # the worker keeps the last shape's weights across token counts and modes
            setup_s += moe_weights * 4 / call.elem_bytes / (device.weights_init_gbs * 1e9)
            last_shape = shape
        inputs = point.tokens * point.d_model * call.elem_bytes  # the input; grad_out is not counted
        for impl in (*suite.impls, *suite.baselines):
            if impl == "expert_parallel":
                continue  # planned by the launcher per world size, not here
            weights, work, moved = _row_work(point, impl, call)
            if impl in footprint.DENSE_WIDTH:  # a baseline's weights are drawn at every point
                setup_s += weights * 4 / call.elem_bytes / (device.weights_init_gbs * 1e9)
            extra = footprint.predicted_bytes(impl, call)
            peak = None if extra is None else extra + weights + inputs
            ms = device.call_ms(work, moved, point.dtype, footprint.launches(impl, point.num_experts))
            skip = _skip(point, impl, peak, weights, moe_weights, device)
            rows.append(PlannedRow(point, impl, peak, ms, 0.0 if skip else _row_wall_s(ms, suite, device), skip))
    return Plan(suite, device, tuple(rows), setup_s)


def label(point: Point) -> str:
    return f"{point.shape} T={point.tokens} {point.dtype} {point.mode} {point.routing}"


def render(p: Plan) -> str:
    """One line per row, then the skipped rows' count and the predicted wall time."""
    lines = [
        f"plan: suite {p.suite.name} on {p.device.name} ({p.device.source}; "
        f"{p.device.memory_bytes / 1e9:.0f} GB): nothing was run",
        f"{'point':<40} {'impl':<14} {'peak GB':>9} {'call ms':>9} {'wall s':>7}  skip",
    ]
    for r in p.rows:
        peak = "-" if r.peak_bytes is None else f"{r.peak_bytes / 1e9:.3g}"
        lines.append(f"{label(r.point):<40} {r.impl:<14} {peak:>9} {r.call_ms:>9.3g} {r.wall_s:>7.1f}  {r.skip or ''}")
    skipped = sum(r.skip is not None for r in p.rows)
    lines.append(
        f"{len(p.rows)} rows, {skipped} skipped; predicted wall time at most {p.wall_s / 60:.1f} min "
        f"({p.setup_s:.0f} s drawing weights); call times are roofline lower bounds"
    )
    return "\n".join(lines)
