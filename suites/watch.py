"""Timing under watch: a point's rows are timed round-robin beside a canary (a fixed matmul of about CANARY_MS)
and, on a CPU with two or more threads, a thread-sync probe (SYNC_CALLS small parallel adds), with the CPU's and
GPU's state read around them (suites/steadiness.py). A disturbed try is paused and timed again, up to `retimes`
times; the earlier tries' samples stay with their rows."""

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
from suites.steadiness import Thresholds, Window, canary_verdict, cpu_verdict, gpu_verdict, sync_verdict
from suites.timing import RowCalls, RowTiming, time_rows

CANARY = "__canary__"  # the hidden row: a fixed matmul of about CANARY_MS, timed beside every point's rows
CANARY_MS = 1.0
SYNC = "__sync__"  # the hidden row that sees where the host placed this process's CPUs
GRAIN = 32768  # at::internal::GRAIN_SIZE: elements below which ATen runs an elementwise op on one thread
SYNC_CALLS = 20  # adds per sample: about 0.1 ms, so one sample a round costs the rows nothing
BASELINE_WINDOWS = 3  # the start-of-run baseline is the fastest of these: a disturbance only slows a probe


class WatchedTimer:
    """Times rows with the probes. `baseline_ms` (the canary's) and `sync_baseline_ms` are what each probe's
    median is judged against: the fastest of BASELINE_WINDOWS windows of the probe alone at the start of the run
    (measured when not given, so a run's later workers share the first one's), lowered to a later clean window's
    median when that is faster by more than the drift limit. A disturbed start would otherwise flag every point
    after it, as a CI machine's did: 1.5 ms at the start, 0.94-1.23 ms beside the rows, every clean point flagged
    at -18% to -37%."""

    def __init__(
        self, budget: CopyBudget, nvml: NVML, peaks: dict, baseline_ms: float | None, sync_ms: float | None = None
    ) -> None:
        self.budget, self.nvml = budget, nvml
        self.thresholds = Thresholds.of(budget.timing)
        self.canary = canary_row(budget, peaks)
        self.sync = sync_row(budget.device)
        self.baseline_ms = baseline_ms if baseline_ms is not None else self._alone(self.canary)
        self.sync_baseline_ms = sync_ms
        if self.sync is not None and sync_ms is None:
            self.sync_baseline_ms = self._alone(self.sync)

    def time(self, pending: list[CheckedRow]) -> tuple[dict[str, RowTiming], dict]:
        """Every row's timing, and the steadiness columns of the try that was kept."""
        s, t = self.budget.timing, self.thresholds
        rows = {r.name: r.calls for r in pending}
        rows[CANARY] = replace(self.canary, watch=True)
        if self.sync is not None:
            rows[SYNC] = replace(self.sync, watch=True)
        timed_from = time.time()
        for attempt in range(s.retimes + 1):
            gpu_before = self.nvml.clock_state()
            window = Window().start()
            timings = time_rows(rows, self.budget.device, s)
            window.stop()
            canary, sync = timings.pop(CANARY), timings.pop(SYNC, None)
            gpu_cols, gpu_reasons = gpu_verdict(gpu_before, self.nvml.clock_state())
            canary_cols, canary_reasons = canary_verdict(canary.samples_ms, self.baseline_ms, t)
            sync_cols, sync_reasons = sync_verdict(sync and sync.samples_ms, self.sync_baseline_ms, t)
            reasons = cpu_verdict(window, t) + canary_reasons + sync_reasons + gpu_reasons
            if lowers_baseline(canary_cols["canary_ms"], self.baseline_ms, t.canary_drift, bool(reasons)):
                self.baseline_ms = canary_cols["canary_ms"]
            if lowers_baseline(sync_cols["sync_ms"], self.sync_baseline_ms, t.sync_drift, bool(reasons)):
                self.sync_baseline_ms = sync_cols["sync_ms"]
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
            **sync_cols,
            **gpu_cols,
            "signals_missing": window.missing or None,
        }
        return timings, steadiness

    def _alone(self, probe: RowCalls) -> float:
        medians = []
        for _ in range(BASELINE_WINDOWS):
            timing = time_rows({"probe": probe}, self.budget.device, self.budget.timing)["probe"]
            if timing.error is not None:
                raise timing.error
            medians.append(timing.stats.median)
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


def sync_row(device: torch.device) -> RowCalls | None:
    """SYNC_CALLS parallel adds of one ATen grain per intra-op thread: each add is a fork and a join of the
    thread pool, so its time is how fast this process's CPUs reach each other, which depends on where the host
    placed them (shared cache or not). None on CUDA and with one thread, where there is nothing to join."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads < 2:
        return None
    x = torch.ones(GRAIN * threads)
    out = torch.empty_like(x)

    def probe() -> None:
        for _ in range(SYNC_CALLS):
            torch.add(x, 1.0, out=out)

    return RowCalls([probe], pool=SYNC)
