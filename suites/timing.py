"""Timers with budgets in milliseconds, as triton.testing.do_bench: warm up, then repeat until the relative
IQR is small enough (after a minimum time) or the budget runs out. Every sample is kept.

The rows of one point are timed round-robin (`time_rows`), so drift in the machine's speed cannot favour
the row that happened to run first. Each round runs a block of calls of one row, then the next row's block:
the first call of a block is untimed, so no timed call pays for the idle thread pool or the cache footprint
its neighbour left. The cache state of the timed calls is a setting, `cache`:

- cold: every call finds its weights and input out of cache, as a model whose weights do not fit in cache
  does. On CUDA a buffer twice the L2 size is zeroed before each call. On CPU a flush as large as the
  last-level cache would cost more than the call, so the row rotates over copies of its weights and input
  (the runner builds them, `RowCalls.calls`); rows that share copies share one rotation (`RowCalls.pool`).
- warm: every call of a block runs on the same weights, back to back, as `torch.utils.benchmark`'s
  `blocked_autorange` does: the data stays in cache as far as it fits.

CPU: perf_counter around each call. CUDA: CUDA events around each call, one synchronise per round;
optionally a CUDA graph replayed instead of the eager calls, which removes launch overhead.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from suites.stats import Stats

CHECK_EVERY = 5  # samples between stopping-rule checks: sorting is cheap, but not free at microsecond calls
MAX_BLOCK = 64  # calls per block at most, so a microsecond row still hands over to its neighbours often
# Cold rows whose calls take longer than this skip the re-entry call: waking the thread pool costs well under
# 0.1 ms, under 2% of such a call, and the rotation already decides the cache state. Warm rows always re-enter:
# the first call of their block is what brings their data back into cache.
REENTRY_MAX_MS = 5.0
CACHE_STATES = ("cold", "warm")


@dataclass(frozen=True)
class TimingSettings:
    """A suite's [timing] table. Bounds (checked by suites/spec.py): every *_ms value finite, 0 to 600000;
    1 <= max_reps <= 100000 and min_reps <= max_reps; every other number finite and >= 0."""

    budget_ms: float = field(default=400.0, metadata={"help": "most wall time spent timing one row (<= 600000)"})
    min_time_ms: float = field(default=40.0, metadata={"help": "keep sampling at least this long"})
    warmup_ms: float = field(default=20.0, metadata={"help": "untimed calls first, at least one"})
    min_reps: int = field(default=5, metadata={"help": "fewest samples kept (<= max_reps)"})
    max_reps: int = field(default=2000, metadata={"help": "most samples kept (<= 100000)"})
    rel_iqr_target: float = field(default=0.05, metadata={"help": "stop once IQR / median is below this"})
    cache: str = field(
        default="cold",
        metadata={
            "help": "cold: weights and input out of cache at every call (CPU: rotating copies; CUDA: L2 "
            "flush); warm: calls back to back on the same data"
        },
    )
    cold_max_mb: float = field(
        default=4096.0, metadata={"help": "CPU, cold: most MB of weight and input copies one point may build"}
    )
    block_ms: float = field(
        default=20.0, metadata={"help": "timed calls of one row per round fill about this long (1 to 64 calls)"}
    )
    l2_flush: bool = field(default=True, metadata={"help": "CUDA, cold: zero a buffer twice the L2 before each call"})
    cuda_graph: bool = field(default=False, metadata={"help": "CUDA, forward mode: replay a captured graph"})
    energy_ms: float = field(default=500.0, metadata={"help": "CUDA with NVML: length of the energy loop; 0 = off"})
    retimes: int = field(default=2, metadata={"help": "times a disturbed point is timed again before it is flagged"})
    retime_pause_s: float = field(default=2.0, metadata={"help": "pause before timing a disturbed point again"})
    disturb_cpu_pressure: float = field(
        default=0.1,
        metadata={
            "help": "disturbed when runnable tasks waited for a CPU (/proc/pressure/cpu some) more than "
            "this fraction of the timing window"
        },
    )
    disturb_steal: float = field(default=0.05, metadata={"help": "disturbed past this fraction of steal time"})
    disturb_ctx_switches_per_s: float = field(
        default=200.0, metadata={"help": "disturbed past this many involuntary context switches per second"}
    )
    disturb_canary_drift: float = field(
        default=0.15, metadata={"help": "disturbed when the canary's median moved more than this from its start"}
    )
    disturb_canary_rel_iqr: float = field(
        default=0.25, metadata={"help": "disturbed when the canary's IQR / median exceeds this"}
    )
    timeout_s: float = field(
        default=300.0,
        metadata={
            "help": "most seconds a point's setup or one row's check may take, and a row's share of timing "
            "beyond its budget; past it the row is recorded as `timeout` and the sweep goes on"
        },
    )

    def __post_init__(self) -> None:
        if self.cache not in CACHE_STATES:
            raise ValueError(f"cache = {self.cache!r}: expected one of {', '.join(CACHE_STATES)}")


@dataclass
class RowTiming:
    """What timing one row gave: every sample, the timer that took them (perf_counter, cuda_event, cuda_graph)
    and why it differs from the settings (`note`)."""

    samples_ms: list[float]
    timer: str
    note: str | None = None
    error: BaseException | None = None  # raised by the row's call while it was being timed (no traceback kept)

    @property
    def stats(self) -> Stats:
        return Stats.of(self.samples_ms)


@dataclass(frozen=True)
class RowCalls:
    """One row to time: what the timers call, and how.

    calls: the row's call on each copy of its weights and input (one copy, or a rotation for cold CPU timing).
    resets: run after each call of the same copy, outside the timed region (train mode drops the gradients, so
        no row's gradients stay resident while its neighbours run).
    pool: rows whose calls run on the same copies share one rotation, so the copy a row gets is one that no
        row touched for the longest time.
    watch: a row that measures the machine, not the implementations (see suites/steadiness.py): one timed call
        a round, no re-entry call.
    """

    calls: Sequence[Callable[[], object]]
    resets: Sequence[Callable[[], None]] | None = None
    pool: str = ""
    graph_ok: bool = True
    watch: bool = False  # the canary: samples for as long as any other row does, and ends with the last of them


def _done(samples: list[float], timed_ms: float, elapsed_ms: float, s: TimingSettings) -> bool:
    if len(samples) < s.min_reps:
        return False
    if len(samples) >= s.max_reps or elapsed_ms >= s.budget_ms:
        return True
    if timed_ms < s.min_time_ms or len(samples) < CHECK_EVERY:
        return False
    return Stats.of(samples).rel_iqr <= s.rel_iqr_target


class _L2Flush:
    """Zeroing a buffer twice the L2 size evicts the previous call's weights, so every call starts cold."""

    def __init__(self, device: torch.device) -> None:
        l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 64 * 2**20)
        self.buffer = torch.empty(2 * l2, dtype=torch.int8, device=device)

    def __call__(self) -> None:
        self.buffer.zero_()


class _RowState:
    """A row being timed: which copy comes next (shared with its pool), its block size and what it spent."""

    def __init__(self, calls: RowCalls, turn: itertools.count, timing: RowTiming) -> None:
        self.calls, self.turn, self.timing = calls, turn, timing
        self.copies: list[Callable[[], object]] = list(calls.calls)  # one call per copy (or a captured graph)
        self.block, self.spent_ms, self.reenter = 1, 0.0, not calls.watch

    def next_copy(self) -> int:
        return next(self.turn) % len(self.copies)

    def reset(self, copy: int) -> None:
        if self.calls.resets:
            self.calls.resets[copy]()


def time_rows(rows: dict[str, RowCalls], device: torch.device, s: TimingSettings) -> dict[str, RowTiming]:
    """Times every row of a point round-robin: each round runs a block of every row still sampling, starting
    one row later than the round before; the first call of each block is untimed.

    A machine whose speed drifts (a shared CPU, a GPU changing clocks) then slows every row alike, so the
    ratios between rows stay honest. Each row keeps its own warm-up, stopping rule and budget.
    """
    cuda = device.type == "cuda"
    flush = _L2Flush(device) if cuda and s.l2_flush and s.cache == "cold" else None
    timings, active = _warmed_up(rows, flush, cuda, s)
    round_ = 0
    while active:
        _round(active, round_, flush, cuda)
        round_ += 1
        active = {
            n: r
            for n, r in active.items()
            if r.timing.error is None
            and (r.calls.watch or not _done(r.timing.samples_ms, sum(r.timing.samples_ms), r.spent_ms, s))
        }
        if all(r.calls.watch for r in active.values()):
            break
    return timings


def _warmed_up(
    rows: dict[str, RowCalls], flush: _L2Flush | None, cuda: bool, s: TimingSettings
) -> tuple[dict[str, RowTiming], dict[str, _RowState]]:
    """Every row's timing, and the rows captured (CUDA graphs) and warmed up, each with its block size; a row
    that fails here keeps its error in its timing and is not timed."""
    timings = {name: RowTiming([], "cuda_event" if cuda else "perf_counter") for name in rows}
    turns: dict[str, itertools.count] = {}
    active: dict[str, _RowState] = {}
    for name, calls in rows.items():
        row = _RowState(calls, turns.setdefault(calls.pool or name, itertools.count()), timings[name])
        try:
            if s.cache == "warm":
                row.copies = row.copies[:1]
            _maybe_capture(row, cuda, s)
            row.block, call_ms = _warm_up(row, flush, s, cuda)
            if calls.watch:  # the canary samples the machine once a round; its own cache state is not the point
                row.block = 1
            elif s.cache == "cold" and call_ms > REENTRY_MAX_MS:
                row.reenter = False
            active[name] = row
        except Exception as exc:
            timings[name].error = exc.with_traceback(None)
    return timings, active


def _round(active: dict[str, _RowState], round_: int, flush: _L2Flush | None, cuda: bool) -> None:
    """One block of every active row, starting with the row `round_` places after the first (so no row always
    follows the same row); the samples are read after one synchronise on CUDA."""
    names = list(active)
    shift = round_ % len(names)
    pending = []
    for name in names[shift:] + names[:shift]:
        try:
            pending.append((name, _run_block(active[name], flush, cuda)))
        except Exception as exc:
            active[name].timing.error = exc.with_traceback(None)
    if cuda:
        torch.cuda.synchronize()
    for name, block in pending:
        row = active[name]
        if cuda:
            block = [begin.elapsed_time(end) for begin, end in block]
            row.spent_ms += sum(block)
        row.timing.samples_ms.extend(block)


def _maybe_capture(row: _RowState, cuda: bool, s: TimingSettings) -> None:
    if not (cuda and s.cuda_graph):
        return
    if not row.calls.graph_ok:
        row.timing.note = "timed eagerly: not CUDA-graph capturable (train mode, or host reads in forward)"
        return
    try:
        row.copies = [_capture(row.copies[0])]
        row.timing.timer = "cuda_graph"
    except Exception as exc:  # e.g. a host sync inside the implementation makes it uncapturable
        torch.cuda.synchronize()
        first = str(exc).splitlines()[0][:160] if str(exc) else ""
        row.timing.note = f"cuda_graph unavailable, timed eagerly: {type(exc).__name__}: {first}"


def _call(row: _RowState, flush: _L2Flush | None) -> int:
    copy = row.next_copy()
    flush and flush()
    row.copies[copy]()
    return copy


def _run_block(row: _RowState, flush: _L2Flush | None, cuda: bool) -> list:
    """One untimed call (the row re-enters: threads wake, its code path warms), then `row.block` timed calls.

    CPU: the samples in ms. CUDA: (begin, end) event pairs, read after the round's synchronise.
    """
    start = time.perf_counter()
    if row.reenter:
        row.reset(_call(row, flush))
    out = []
    for _ in range(row.block):
        copy = row.next_copy()
        flush and flush()
        if cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            row.copies[copy]()
            end.record()
            out.append((begin, end))
        else:
            t0 = time.perf_counter()
            row.copies[copy]()
            out.append((time.perf_counter() - t0) * 1e3)
        row.reset(copy)
    if not cuda:
        row.spent_ms += (time.perf_counter() - start) * 1e3
    return out


def _warm_up(row: _RowState, flush: _L2Flush | None, s: TimingSettings, cuda: bool) -> tuple[int, float]:
    """Untimed calls for `warmup_ms`, at least two; returns the block size that fills about `block_ms` and the
    fastest warm-up call's ms."""
    start, times = time.perf_counter(), []
    while True:
        t0 = time.perf_counter()
        row.reset(_call(row, flush))
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        if len(times) >= 2 and (time.perf_counter() - start) * 1e3 >= s.warmup_ms:
            break
    call_ms = min(times[1:]) * 1e3
    return max(1, min(MAX_BLOCK, int(s.block_ms / max(call_ms, 1e-6)))), call_ms


def _capture(fn: Callable[[], object]) -> Callable[[], None]:
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def time_fn(
    fn: Callable[[], object], device: torch.device, s: TimingSettings, reset: Callable[[], None] | None = None
) -> RowTiming:
    """Times one call alone (the peaks, tests): `time_rows` with a single row; its error is raised."""
    timing = time_rows({"row": RowCalls([fn], [reset] if reset else None)}, device, s)["row"]
    if timing.error is not None:
        raise timing.error
    return timing
