"""Timers with budgets in milliseconds, as triton.testing.do_bench: warm up, then repeat until the relative
IQR is small enough (after a minimum time) or the budget runs out. Every sample is kept.

CPU: perf_counter around each call. CUDA: pre-allocated CUDA events around each call, L2 flushed before each
repetition outside the timed region, one synchronise per batch; optionally a CUDA graph replayed instead of
the eager calls, which removes launch overhead.
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

    @property
    def stats(self) -> Stats:
        return Stats.of(self.samples_ms)


def _done(samples: list[float], timed_ms: float, elapsed_ms: float, s: TimingSettings) -> bool:
    if len(samples) < s.min_reps:
        return False
    if len(samples) >= s.max_reps or elapsed_ms >= s.budget_ms:
        return True
    if timed_ms < s.min_time_ms or len(samples) % CHECK_EVERY:
        return False
    return Stats.of(samples).rel_iqr <= s.rel_iqr_target


def time_cpu(fn: Callable[[], object], s: TimingSettings, setup: Callable[[], None] | None = None) -> Timing:
    start = time.perf_counter()
    while True:
        setup and setup()
        fn()
        if (time.perf_counter() - start) * 1e3 >= s.warmup_ms:
            break
    samples: list[float] = []
    start = time.perf_counter()
    while True:
        setup and setup()
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
        if _done(samples, sum(samples), (time.perf_counter() - start) * 1e3, s):
            return Timing(samples, "perf_counter")


class _L2Flush:
    """Zeroing a buffer twice the L2 size evicts the previous call's weights, so every call starts cold."""

    def __init__(self, device: torch.device) -> None:
        l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 64 * 2**20)
        self.buffer = torch.empty(2 * l2, dtype=torch.int8, device=device)

    def __call__(self) -> None:
        self.buffer.zero_()


def time_cuda(fn: Callable[[], object], s: TimingSettings, setup: Callable[[], None] | None = None) -> Timing:
    """CUDA events around each call; the setup (and the L2 flush) runs between calls, outside the events."""
    flush = _L2Flush(torch.device("cuda", torch.cuda.current_device())) if s.l2_flush else None
    timer, note, call = "cuda_event", None, fn
    if s.cuda_graph:
        try:
            call, timer = _capture(fn), "cuda_graph"
        except Exception as exc:  # e.g. a host sync inside the implementation makes it uncapturable
            torch.cuda.synchronize()
            note = f"cuda_graph unavailable, timed eagerly: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"

    def prepare() -> None:
        setup and setup()
        flush and flush()

    torch.cuda.synchronize()
    start = time.perf_counter()
    while True:
        prepare()
        call()
        torch.cuda.synchronize()
        if (time.perf_counter() - start) * 1e3 >= s.warmup_ms:
            break
    samples: list[float] = []
    start = time.perf_counter()
    while True:
        batch = min(CHECK_EVERY, s.max_reps - len(samples))
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(batch)]
        for begin, end in events:
            prepare()
            begin.record()
            call()
            end.record()
        torch.cuda.synchronize()
        samples.extend(begin.elapsed_time(end) for begin, end in events)
        if _done(samples, sum(samples), (time.perf_counter() - start) * 1e3, s):
            return Timing(samples, timer, note)


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
    if device.type == "cuda":
        return time_cuda(fn, s, setup)
    return time_cpu(fn, s, setup)
