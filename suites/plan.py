"""`moe-bench run SUITE --plan`: what a run of the suite would do, predicted without running anything.

For every point and row: the predicted peak memory (analysis/footprint.py), the predicted time of one call
(the roofline of its FLOPs and bytes against a device profile, or its launch floor: a lower bound), whether
the runner would skip it and why (suites/fit.py, the runner's own rule, in the runner's order: the dense
baselines first, each kept across the points of a shape unless it does not fit), and the wall time the run
would take under the suite's [timing] protocol (an upper bound: every row times for its full budget).
"""

from __future__ import annotations

from dataclasses import dataclass

import moe_impls
from analysis import flops, footprint
from analysis.devices import DeviceProfile
from suites import fit
from suites.suite_model import Point, Suite

CHECK_CALLS = 4  # untimed calls per row besides the timing: the check, memory, counters and the fresh recheck
STARTUP_S = 5.0  # the worker's start, the peaks and the canary (2.6 s measured on 2 CPU cores)
# content fingerprints of the shared weights per row (suites/integrity.py): around its check and after timing;
# each reads the weights as int64, about 8 bytes moved per weight byte of bf16 (4 of fp32)
FINGERPRINTS_PER_ROW = 2


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
    setup_s: float  # drawing the weights: each shape's once, and each baseline's once per shape

    @property
    def wall_s(self) -> float:
        return STARTUP_S + self.setup_s + sum(r.wall_s for r in self.rows)


def _row_work(point: Point, impl: str, call: footprint.Call) -> tuple[int, int, int]:
    """(weight bytes, FLOPs computed, bytes moved) of one call of the row."""
    cfg, b = point.moe_config(), call.elem_bytes
    if fit.is_baseline(impl):
        weights = fit.baseline_weight_bytes(impl, call)
        work = flops.dense_flops(cfg.d_model, fit.baseline_width(impl, call), cfg.activation, point.tokens, point.mode)
        return weights, work, flops.min_bytes(weights, point.tokens, cfg.d_model, b, point.mode)
    weights = _moe_weight_bytes(call)
    rows = {"padded": cfg.num_experts * call.max_load, "dense_all": cfg.num_experts * point.tokens}
    computed = rows.get(impl, call.assignments)
    touched = min(cfg.num_experts, computed) * footprint.weight_grads(call) // cfg.num_experts
    moved = flops.min_bytes(touched, point.tokens, cfg.d_model, b, point.mode)
    return weights, flops.moe_flops(cfg, point.tokens, computed, point.mode), moved


def _moe_weight_bytes(call: footprint.Call) -> int:
    """The experts and the router: what the worker keeps for every point of the shape."""
    return footprint.weight_grads(call) + call.num_experts * call.d_model * call.elem_bytes


def _row_wall_s(call_ms: float, suite: Suite, device: DeviceProfile) -> float:
    """The most a row takes under the [timing] protocol: warm-up, sampling to the budget (or the fewest
    samples), the untimed block re-entry calls, the checks, and the energy loop on a GPU."""
    s = suite.timing
    timed = max(s.budget_ms, s.min_reps * call_ms)
    block = max(1.0, min(64.0, s.block_ms / max(call_ms, 1e-6)))
    energy = max(s.energy_ms, call_ms) if device.name != "cpu" and s.energy_ms > 0 else 0.0
    return (max(s.warmup_ms, call_ms) + timed + timed / block + CHECK_CALLS * call_ms + energy) / 1e3


def _unsupported(point: Point, impl: str) -> str | None:
    """Why our implementation cannot express the point (a model's rows are its block's: never ours to refuse)."""
    if fit.is_baseline(impl) or point.model:
        return None
    return moe_impls.resolve(impl).unsupported(point.moe_config())


def _draw_s(weight_bytes: int, device: DeviceProfile) -> float:
    return weight_bytes / (device.weights_init_gbs * 1e9)


def _fingerprint_s(weight_bytes: int, elem_bytes: int, device: DeviceProfile) -> float:
    return FINGERPRINTS_PER_ROW * weight_bytes * 8 / elem_bytes / (device.bandwidth_gbs * 1e9)


def _skips(point: Point, impls: list[str], baselines: tuple[str, ...], call: footprint.Call, device: DeviceProfile):
    """The runner's decision (suites/fit.py) against the profile's memory, with the point's weights and input
    resident; each row's predicted call bytes with it."""
    moe_weights, inputs = _moe_weight_bytes(call), point.tokens * point.d_model * call.elem_bytes
    if moe_weights > device.memory_bytes:
        why = f"the point's weights ({moe_weights / 1e9:.3g} GB) exceed the {device.memory_bytes / 1e9:.3g} GB"
        return dict.fromkeys((*impls, *baselines), why)
    unsupported = {i: _unsupported(point, i) for i in impls}
    calls = {i: None if unsupported[i] else fit.predicted_bytes(i, point, call) for i in impls}
    dense = {
        b: fit.Baseline(fit.baseline_weight_bytes(b, call), fit.predicted_bytes(b, point, call)) for b in baselines
    }
    free = device.memory_bytes - moe_weights - inputs
    skips = fit.decide(free, calls, dense, f"free beside the weights on {device.name}")
    return {name: unsupported.get(name) or skip for name, skip in skips.items()}


def plan(suite: Suite, device: DeviceProfile) -> Plan:
    rows, setup_s, shape_kept, kept = [], 0.0, None, set()
    impls = [i for i in suite.impls if i != "expert_parallel"]  # planned by the launcher per world size, not here
    for point in suite.points:
        call = fit.call_of(point, fit.max_load(point))
        shape = (point.shape, point.d_model, point.d_ff, point.num_experts, point.dtype)
        if shape != shape_kept:  # the worker keeps a shape's weights and baselines across token counts and modes
            shape_kept, kept = shape, set()
            setup_s += _draw_s(_moe_weight_bytes(call), device)
        names = suite.row_names(point, impls, [])
        skips = _skips(point, names, suite.baselines, call, device)
        inputs = point.tokens * point.d_model * call.elem_bytes  # the input; grad_out is not counted
        for impl in (*names, *suite.baselines):
            weights, work, moved = _row_work(point, impl, call)
            if fit.is_baseline(impl):
                key = (impl, fit.baseline_width(impl, call))
                if skips[impl]:
                    kept.discard(key)
                elif key not in kept:
                    kept.add(key)
                    setup_s += _draw_s(weights, device)
            extra = fit.predicted_bytes(impl, point, call)
            peak = None if extra is None else extra + weights + inputs
            ms = device.call_ms(work, moved, point.dtype, footprint.launches(impl, point.num_experts))
            wall = _row_wall_s(ms, suite, device) + _fingerprint_s(_moe_weight_bytes(call), call.elem_bytes, device)
            rows.append(PlannedRow(point, impl, peak, ms, 0.0 if skips[impl] else wall, skips[impl]))
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
