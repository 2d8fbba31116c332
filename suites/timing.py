"""Timers with budgets in milliseconds, as triton.testing.do_bench: warm up, then repeat until the relative
IQR is small enough (after a minimum time) or the budget runs out. Every sample is kept. The settings are a
suite's [timing] table (suites/timing_settings.py); a row's budget counts the whole of its blocks, untimed
calls, flushes and resets included.

The rows of one point are timed round-robin (`time_rows`), so drift in the machine's speed cannot favour
the row that happened to run first. Each round runs a block of calls of one row, then the next row's block:
the first call of a block is untimed, so no timed call pays for the idle thread pool or the cache footprint
its neighbour left. The cache state of the timed calls is a setting, `cache`:

- cold: every call finds its weights and input out of cache, as a model whose weights do not fit in cache
  does. On CUDA a buffer twice the L2 size is zeroed before each call. On CPU a flush as large as the
  last-level cache would cost more than the call, so the row rotates over copies of its weights and input
  (the runner builds them, `RowCalls.calls`); rows that share copies share one rotation (`RowCalls.pool`).
  Where the copies that fit do not span the cache, each call is preceded by a read that does
  (`RowCalls.before`, suites/cache.py).
- warm: every call of a block runs on the same weights, back to back, as `torch.utils.benchmark`'s
  `blocked_autorange` does: the data stays in cache as far as it fits.

CPU: perf_counter around each call. CUDA: CUDA events around each call, one synchronise per round;
optionally a CUDA graph replayed instead of the eager calls, which removes launch overhead. Every row is
captured before any row warms up, since a capture empties the allocator's cache.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial

import torch

from suites import cuda_timing
from suites.cuda_timing import L2Flush
from suites.stats import Stats
from suites.timing_settings import TimingSettings

CHECK_EVERY = 5  # samples between stopping-rule checks: sorting is cheap, but not free at microsecond calls
MAX_BLOCK = 64  # calls per block at most, so a microsecond row still hands over to its neighbours often


@dataclass
class RowTiming:
    """What timing one row gave: every sample, the timer that took them (perf_counter, cuda_event, cuda_graph)
    and why it differs from the settings (`note`)."""

    samples_ms: list[float]
    timer: str
    note: str | None = None
    l2_flushed: bool = False  # every timed call followed an L2 flush (CUDA, cache = cold, l2_flush)
    error: BaseException | None = None  # raised by the row's call while it was being timed (no traceback kept)
    replay: Callable[[], object] | None = None  # timer cuda_graph: the captured graph's replay, what was timed

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
    before: run before each call, outside the timed region, after the L2 flush where there is one (cold CPU:
        the eviction read that makes up for copies that did not fit).
    watch: a row that measures the machine, not the implementations (see suites/steadiness.py): one timed call
        a round, after its re-entry call.
    """

    calls: Sequence[Callable[[], object]]
    resets: Sequence[Callable[[], None]] | None = None
    pool: str = ""
    graph_ok: bool = True
    before: Callable[[], None] | None = None
    watch: bool = False  # the canary: samples for as long as any other row does, and ends with the last of them


def _done(samples: list[float], timed_ms: float, elapsed_ms: float, s: TimingSettings) -> bool:
    if len(samples) < s.min_reps:
        return False
    if len(samples) >= s.max_reps or elapsed_ms >= s.budget_ms:
        return True
    if timed_ms < s.min_time_ms or len(samples) < CHECK_EVERY:
        return False
    return Stats.of(samples).rel_iqr <= s.rel_iqr_target


class _RowState:
    """A row being timed: which copy comes next (shared with its pool), its block size and what it spent."""

    def __init__(self, calls: RowCalls, turn: itertools.count, timing: RowTiming, warm: bool) -> None:
        self.calls, self.turn, self.timing = calls, turn, timing
        copies = list(calls.calls)
        self.copies: list[Callable[[], object]] = copies[:1] if warm else copies  # one call per copy, or a graph
        # Every block starts with an untimed re-entry call, long cold calls and the canary's too. The rotation
        # decides where the weights are, but not the rest of what a neighbour's call left: the row's scratch
        # memory (reused from the heap, suites/worker.py MALLOC_TUNABLES), TLB, branch and thread-pool state.
        # Paired per call under the worker's allocator settings, cold (8 copies), fine-32x4 T=16 train, a call
        # after the neighbours / after its own call: transformers' eager experts (16-20 ms) 1.30 and 1.10 without
        # it, 1.10 and 1.02 with it; loop (6 ms) 1.08 and 1.03; dense_all (7 ms) 1.04 and 1.00.
        self.block, self.spent_ms = 1, 0.0

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
    with _no_gc():
        return _time_rows(rows, device, s)


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """Python's cyclic garbage collector off while rows are timed, as timeit (and so torch.utils.benchmark) turns
    it off: a collection that falls in a call costs in proportion to every object alive, the neighbours' layers and
    copies included. With it on, loop at one token (cpu suite, cold) ran 1.09-1.12x slower beside its point's rows
    than alone, and transformers' eager experts 1.07-1.11x."""
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _time_rows(rows: dict[str, RowCalls], device: torch.device, s: TimingSettings) -> dict[str, RowTiming]:
    cuda = device.type == "cuda"
    flush = L2Flush(device) if cuda and s.l2_flush and s.cache == "cold" else None
    timings, active = _warmed_up(rows, flush, cuda, s)
    for timing in timings.values():
        timing.l2_flushed = flush is not None
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
    rows: dict[str, RowCalls], flush: L2Flush | None, cuda: bool, s: TimingSettings
) -> tuple[dict[str, RowTiming], dict[str, _RowState]]:
    """Every row's timing, and the rows captured (CUDA graphs) and warmed up; a row that fails here keeps its
    error in its timing and is not timed.

    Every capture comes before any warm-up: entering a capture synchronises and empties the allocator's cache,
    so a row warmed up before another row's capture would pay for cudaMalloc again in its timed rounds."""
    timings = {name: RowTiming([], "cuda_event" if cuda else "perf_counter") for name in rows}
    turns: dict[str, itertools.count] = {}
    states = {
        name: _RowState(
            calls, turns.setdefault(calls.pool or name, itertools.count()), timings[name], s.cache == "warm"
        )
        for name, calls in rows.items()
    }
    captured = {n: r for n, r in states.items() if _survives(r, partial(_maybe_capture, cuda=cuda, s=s))}
    return timings, {n: r for n, r in captured.items() if _survives(r, partial(_warm_up, flush=flush, s=s, cuda=cuda))}


def _survives(row: _RowState, step: Callable[[_RowState], None]) -> bool:
    """Runs one preparation step of a row; False, with the error kept in its timing, when the step raised."""
    try:
        step(row)
    except Exception as exc:
        row.timing.error = exc.with_traceback(None)
        return False
    return True


def _round(active: dict[str, _RowState], round_: int, flush: L2Flush | None, cuda: bool) -> None:
    """One block of every active row, starting with the row `round_` places after the first (so no row always
    follows the same row); the samples are read after one synchronise on CUDA."""
    names = list(active)
    shift = round_ % len(names)
    pending = []
    for name in names[shift:] + names[:shift]:
        try:
            pending.append((active[name], _run_block(active[name], flush, cuda)))
        except Exception as exc:
            active[name].timing.error = exc.with_traceback(None)
    if cuda:
        torch.cuda.synchronize()
    for row, read in pending:
        samples, spent_ms = read()
        row.timing.samples_ms.extend(samples)
        row.spent_ms += spent_ms


def _maybe_capture(row: _RowState, cuda: bool, s: TimingSettings) -> None:
    if not (cuda and s.cuda_graph):
        return
    if not row.calls.graph_ok:
        row.timing.note = (
            "timed eagerly: not CUDA-graph capturable (train mode, or host reads in forward, such as torch's grouped"
            " GEMM off compute capability 9.x/10.x)"
        )
        return
    try:
        row.copies = [cuda_timing.capture_graph(row.copies[0])]
        row.timing.replay = row.copies[0]
        row.timing.timer = "cuda_graph"
    except Exception as exc:  # e.g. a host sync inside the implementation makes it uncapturable
        torch.cuda.synchronize()
        first = str(exc).splitlines()[0][:160] if str(exc) else ""
        row.timing.note = f"cuda_graph unavailable, timed eagerly: {type(exc).__name__}: {first}"


def _ready_copy(row: _RowState, flush: L2Flush | None) -> int:
    """The copy the row's next call runs on, with L2 flushed and the row's eviction read done first where the
    cache state asks for them."""
    copy = row.next_copy()
    flush and flush()
    row.calls.before and row.calls.before()
    return copy


def _call(row: _RowState, flush: L2Flush | None) -> None:
    """One untimed call, then its reset."""
    copy = _ready_copy(row, flush)
    row.copies[copy]()
    row.reset(copy)


def _run_block(row: _RowState, flush: L2Flush | None, cuda: bool) -> Callable[[], tuple[list[float], float]]:
    """One untimed call (the row re-enters: threads wake, its code path warms), then `row.block` timed calls.

    Returns what reads the block, once the round has synchronised on CUDA: the samples (ms) and the time the
    whole block took (ms), re-entry, flushes and resets included, which counts against the row's budget.
    """
    return _cuda_block(row, flush) if cuda else _cpu_block(row, flush)


def _cpu_block(row: _RowState, flush: L2Flush | None) -> Callable[[], tuple[list[float], float]]:
    start = time.perf_counter()
    _call(row, flush)
    samples = []
    for _ in range(row.block):
        copy = _ready_copy(row, flush)
        t0 = time.perf_counter()
        row.copies[copy]()
        samples.append((time.perf_counter() - t0) * 1e3)
        row.reset(copy)
    spent_ms = (time.perf_counter() - start) * 1e3
    return lambda: (samples, spent_ms)


def _cuda_block(row: _RowState, flush: L2Flush | None) -> Callable[[], tuple[list[float], float]]:
    """Events made before the block's first call and recorded on the current stream, where the calls (and a
    graph's replay) run; a flush is enqueued before its call's begin event, so it stays outside the sample."""
    span, events = _event_pair(), [_event_pair() for _ in range(row.block)]
    span[0].record()
    _call(row, flush)
    for begin, end in events:
        copy = _ready_copy(row, flush)
        begin.record()
        row.copies[copy]()
        end.record()
        row.reset(copy)
    span[1].record()
    return lambda: ([b.elapsed_time(e) for b, e in events], span[0].elapsed_time(span[1]))


def _event_pair() -> tuple[torch.cuda.Event, torch.cuda.Event]:
    return torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)


def _warm_up(row: _RowState, flush: L2Flush | None, s: TimingSettings, cuda: bool) -> None:
    """Untimed calls for `warmup_ms`, at least two; from the fastest after the first, the block size that
    fills about `block_ms`."""
    start, times = time.perf_counter(), []
    while True:
        t0 = time.perf_counter()
        _call(row, flush)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        if len(times) >= 2 and (time.perf_counter() - start) * 1e3 >= s.warmup_ms:
            break
    if row.calls.watch:  # the canary samples the machine once a round; its own cache state is not the point
        return
    call_ms = min(times[1:]) * 1e3
    row.block = max(1, min(MAX_BLOCK, int(s.block_ms / max(call_ms, 1e-6))))


def time_fn(
    fn: Callable[[], object], device: torch.device, s: TimingSettings, reset: Callable[[], None] | None = None
) -> RowTiming:
    """Times one call alone (the peaks, tests): `time_rows` with a single row; its error is raised."""
    timing = time_rows({"row": RowCalls([fn], [reset] if reset else None)}, device, s)["row"]
    if timing.error is not None:
        raise timing.error
    return timing
