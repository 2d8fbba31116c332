"""Timing under watch: a point's rows are timed round-robin beside a canary (a fixed matmul of about CANARY_MS),
with the CPU's and GPU's state read around them (suites/steadiness.py). A disturbed try is paused and timed
again, up to `retimes` times; the earlier tries' samples stay with their rows."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import torch

from suites.cache import ColdPlan, plan_copies
from suites.checks import CheckedRow
from suites.copies import CopyBudget
from suites.nvml import NVML
from suites.schema import lowers_baseline
from suites.steadiness import Thresholds, Window, canary_verdict, cpu_verdict, gpu_verdict
from suites.timing import RowCalls, RowTiming, time_rows

CANARY = "__canary__"  # the hidden row: a fixed matmul of about CANARY_MS, timed beside every point's rows
CANARY_MS = 1.0
BASELINE_WINDOWS = 3  # the start-of-run baseline is the fastest of these: a disturbance only slows a matmul


class WatchedTimer:
    """Times rows with the canary. `baseline_ms` is what its median is judged against: the fastest of
    BASELINE_WINDOWS windows of the canary alone at the start of the run (measured when not given, so a run's
    later workers share the first one's), lowered to a later clean window's median when that is faster by more
    than the drift limit. A disturbed start would otherwise flag every point after it, as a CI machine's did:
    1.5 ms at the start, 0.94-1.23 ms beside the rows, every clean point flagged at -18% to -37%."""

    def __init__(self, budget: CopyBudget, nvml: NVML, peaks: dict, baseline_ms: float | None) -> None:
        self.budget, self.nvml = budget, nvml
        self.thresholds = Thresholds.of(budget.timing)
        self.canary = canary_row(budget, peaks)
        self.baseline_ms = baseline_ms if baseline_ms is not None else self._canary_alone()

    def time(self, pending: list[CheckedRow]) -> tuple[dict[str, RowTiming], dict]:
        """Every row's timing, and the steadiness columns of the try that was kept."""
        s = self.budget.timing
        rows = {r.name: r.calls for r in pending}
        rows[CANARY] = replace(self.canary, watch=True)
        timed_from = time.time()
        for attempt in range(s.retimes + 1):
            gpu_before = self.nvml.clock_state()
            window = Window().start()
            timings = time_rows(rows, self.budget.device, s)
            window.stop()
            canary = timings.pop(CANARY)
            gpu_cols, gpu_reasons = gpu_verdict(gpu_before, self.nvml.clock_state())
            canary_cols, canary_reasons = canary_verdict(canary.samples_ms, self.baseline_ms, self.thresholds)
            reasons = cpu_verdict(window, self.thresholds) + canary_reasons + gpu_reasons
            if lowers_baseline(canary_cols["canary_ms"], self.baseline_ms, self.thresholds.canary_drift, bool(reasons)):
                self.baseline_ms = canary_cols["canary_ms"]
            if not reasons or attempt == s.retimes:
                break
            for r in pending:
                r.earlier.append(timings[r.name].samples_ms)
            time.sleep(s.retime_pause_s)
        steadiness = {
            "disturbed": bool(reasons),
            "disturbance": reasons or None,
            "retimed": attempt,
            "timing_window_s": window.wall_s,
            "timed_from": timed_from,
            "timed_to": time.time(),
            **window.signals,
            **canary_cols,
            **gpu_cols,
            "signals_missing": window.missing or None,
        }
        return timings, steadiness

    def _canary_alone(self) -> float:
        medians = []
        for _ in range(BASELINE_WINDOWS):
            timing = time_rows({CANARY: self.canary}, self.budget.device, self.budget.timing)
            if timing[CANARY].error is not None:
                raise timing[CANARY].error
            medians.append(timing[CANARY].stats.median)
        return min(medians)


def canary_row(budget: CopyBudget, peaks: dict) -> RowCalls:
    """A square fp32 matmul sized from the measured fp32 peak to take about CANARY_MS (the peak is a best
    sample, so a busy start-up does not shrink it), cold in cold CPU mode (copies and eviction reads spanning
    2 x the LLC) so that it sees the same cache state as the rows beside it."""
    flops = peaks["matmul_tflops"]["float32"] * 1e12 * CANARY_MS * 1e-3
    n = max(64, min(16384, round((flops / 2) ** (1 / 3) / 64) * 64))
    a = torch.randn(n, n, device=budget.device)
    plan = plan_copies(2 * a.numel() * 4, budget.llc_bytes, budget.max_bytes // 8) if budget.cold_cpu else ColdPlan(1)
    calls = [_mm(a, a.clone())] + [_mm(a.clone(), a.clone()) for _ in range(plan.copies - 1)]
    return RowCalls(calls, pool=CANARY, before=budget.eviction.reader(plan.read_bytes))


def _mm(a: torch.Tensor, b: torch.Tensor) -> Callable[[], object]:
    return lambda: torch.mm(a, b)
