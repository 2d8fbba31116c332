"""Timers with budgets in milliseconds, as triton.testing.do_bench: warm up, then repeat until the relative
IQR is small enough (after a minimum time) or the budget runs out. Every sample is kept.

The rows of one point are timed round-robin (`time_rows`), so drift in the machine's speed cannot favour
the row that happened to run first. CPU: perf_counter around each call. CUDA: CUDA events around each
call, L2 flushed before each repetition outside the timed region, one synchronise per round; optionally a
CUDA graph replayed instead of the eager calls, which removes launch overhead.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from suites.stats import Stats

CHECK_EVERY = 5  # samples between stopping-rule checks: sorting is cheap, but not free at microsecond calls


@dataclass(frozen=True)
class TimingSettings:
    budget_ms: float = field(default=400.0, metadata={"help": "most wall time spent timing one row"})
    min_time_ms: float = field(default=40.0, metadata={"help": "keep sampling at least this long"})
    warmup_ms: float = field(default=20.0, metadata={"help": "untimed calls first, at least one"})
    min_reps: int = field(default=5, metadata={"help": "fewest samples kept"})
    max_reps: int = field(default=2000, metadata={"help": "most samples kept"})
    rel_iqr_target: float = field(default=0.05, metadata={"help": "stop once IQR / median is below this"})
    l2_flush: bool = field(default=True, metadata={"help": "CUDA: zero a buffer twice the L2 size before each call"})
    cuda_graph: bool = field(default=False, metadata={"help": "CUDA, forward mode: replay a captured graph"})
    energy_ms: float = field(default=500.0, metadata={"help": "CUDA with NVML: length of the energy loop; 0 = off"})


@dataclass
class Timing:
    samples_ms: list[float]
    timer: str
    note: str | None = None
    error: BaseException | None = None  # raised by the row's call while it was being timed

    @property
    def stats(self) -> Stats:
        return Stats.of(self.samples_ms)


@dataclass(frozen=True)
class Timed:
    """One row to time: the call, the untimed setup run before each call, and whether a CUDA graph may replace it."""

    fn: Callable[[], object]
    setup: Callable[[], None] | None = None
    graph_ok: bool = True


def _done(samples: list[float], timed_ms: float, elapsed_ms: float, s: TimingSettings) -> bool:
    if len(samples) < s.min_reps:
        return False
    if len(samples) >= s.max_reps or elapsed_ms >= s.budget_ms:
        return True
    if timed_ms < s.min_time_ms or len(samples) % CHECK_EVERY:
        return False
    return Stats.of(samples).rel_iqr <= s.rel_iqr_target


class _L2Flush:
    """Zeroing a buffer twice the L2 size evicts the previous call's weights, so every call starts cold."""

    def __init__(self, device: torch.device) -> None:
        l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 64 * 2**20)
        self.buffer = torch.empty(2 * l2, dtype=torch.int8, device=device)

    def __call__(self) -> None:
        self.buffer.zero_()


def time_rows(rows: dict[str, Timed], device: torch.device, s: TimingSettings) -> dict[str, Timing]:
    """Times every row of a point round-robin: each round runs one repetition of every row still sampling,
    starting one row later than the round before.

    A machine whose speed drifts (a shared CPU, a GPU changing clocks) then slows every row alike, so the
    ratios between rows stay honest. Each row keeps its own warm-up, stopping rule and budget. CPU:
    perf_counter around each call. CUDA: a pair of events around each call, the setup and the L2 flush
    between calls outside them, one synchronise per round.
    """
    cuda = device.type == "cuda"
    flush = _L2Flush(device) if cuda and s.l2_flush else None
    timings: dict[str, Timing] = {}
    calls: dict[str, tuple[Callable[[], object], Callable[[], None]]] = {}
    for name, row in rows.items():
        timing = timings[name] = Timing([], "cuda_event" if cuda else "perf_counter")
        try:
            call = row.fn
            if cuda and s.cuda_graph and not row.graph_ok:
                timing.note = "timed eagerly: not CUDA-graph capturable (train mode, or host reads in forward)"
            if cuda and s.cuda_graph and row.graph_ok:
                try:
                    call, timing.timer = _capture(row.fn), "cuda_graph"
                except Exception as exc:  # e.g. a host sync inside the implementation makes it uncapturable
                    torch.cuda.synchronize()
                    first = str(exc).splitlines()[0][:160] if str(exc) else ""
                    timing.note = f"cuda_graph unavailable, timed eagerly: {type(exc).__name__}: {first}"
            prepare = _prepare(row.setup, flush)
            _warm_up(call, prepare, s.warmup_ms, cuda)
            calls[name] = (call, prepare)
        except Exception as exc:
            timing.error = exc
    spent_ms = dict.fromkeys(calls, 0.0)
    active, round_ = list(calls), 0
    while active:
        events = {}
        shift, round_ = round_ % len(active), round_ + 1  # rotate: no row always follows the same row (and its cache)
        for name in active[shift:] + active[:shift]:
            call, prepare = calls[name]
            try:
                start = time.perf_counter()
                prepare()
                if cuda:
                    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    begin.record()
                    call()
                    end.record()
                    events[name] = (begin, end)
                else:
                    t0 = time.perf_counter()
                    call()
                    t1 = time.perf_counter()
                    timings[name].samples_ms.append((t1 - t0) * 1e3)
                    spent_ms[name] += (t1 - start) * 1e3
            except Exception as exc:
                timings[name].error = exc
        if cuda:
            torch.cuda.synchronize()
            for name, (begin, end) in events.items():
                timings[name].samples_ms.append(begin.elapsed_time(end))
                spent_ms[name] += timings[name].samples_ms[-1]
        active = [
            n
            for n in active
            if timings[n].error is None and not _done(timings[n].samples_ms, sum(timings[n].samples_ms), spent_ms[n], s)
        ]
    return timings


def _prepare(setup: Callable[[], None] | None, flush: _L2Flush | None) -> Callable[[], None]:
    def prepare() -> None:
        setup and setup()
        flush and flush()

    return prepare


def _warm_up(call: Callable[[], object], prepare: Callable[[], None], warmup_ms: float, cuda: bool) -> None:
    """Untimed calls for `warmup_ms`, at least one."""
    start = time.perf_counter()
    while True:
        prepare()
        call()
        if cuda:
            torch.cuda.synchronize()
        if (time.perf_counter() - start) * 1e3 >= warmup_ms:
            return


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
    fn: Callable[[], object], device: torch.device, s: TimingSettings, setup: Callable[[], None] | None = None
) -> Timing:
    """Times one call alone (the peaks, tests): `time_rows` with a single row; its error is raised."""
    timing = time_rows({"row": Timed(fn, setup)}, device, s)["row"]
    if timing.error is not None:
        raise timing.error
    return timing


def time_cpu(fn: Callable[[], object], s: TimingSettings, setup: Callable[[], None] | None = None) -> Timing:
    return time_fn(fn, torch.device("cpu"), s, setup)


def time_cuda(fn: Callable[[], object], s: TimingSettings, setup: Callable[[], None] | None = None) -> Timing:
    return time_fn(fn, torch.device("cuda", torch.cuda.current_device()), s, setup)
