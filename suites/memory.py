"""Peak memory of one call, measured: CUDA allocator peak stats, or the CPU profiler's allocation events."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch.profiler import ProfilerActivity, profile

R = TypeVar("R")


@dataclass(frozen=True)
class MemoryMeasurement:
    kind: str  # 'cuda' or 'cpu'
    call_peak_bytes: int  # peak bytes allocated by the call on top of what was live before it
    reserved_bytes: int | None  # CUDA caching-allocator peak reserved; None on CPU


def measure_cuda(fn: Callable[[], R]) -> tuple[R, MemoryMeasurement]:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    result = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    return result, MemoryMeasurement("cuda", peak, torch.cuda.max_memory_reserved())


def measure_cpu(fn: Callable[[], R]) -> tuple[R, MemoryMeasurement]:
    """Replays the profiler's [memory] events in time order; the peak of their running sum is the call's peak."""
    with _quiet_native_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = [
        e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]" and e.device_type().name == "CPU"
    ]
    running = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        running += e.nbytes()
        peak = max(peak, running)
    return result, MemoryMeasurement("cpu", peak, None)


def available_bytes(device: torch.device) -> int | None:
    """Memory a new allocation can take now: CUDA's free bytes, or the kernel's MemAvailable; None if unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def measure_memory(fn: Callable[[], R], device: torch.device) -> tuple[R, MemoryMeasurement]:
    """Runs `fn` once; returns its result and the memory it needed on top of what was already live."""
    return measure_cuda(fn) if device.type == "cuda" else measure_cpu(fn)


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """The profiler's native code prints start/stop banners on file descriptor 2; silence them for the call."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
