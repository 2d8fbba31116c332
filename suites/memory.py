"""Memory of one call, measured: CUDA allocator stats, or the CPU profiler's allocation events; and, apart from
them, the weight gradients a train call leaves on its layer (read from the real p.grad tensors)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TypeVar

import torch
from torch import nn
from torch.autograd.profiler import profile

R = TypeVar("R")


@dataclass(frozen=True)
class MemoryMeasurement:
    kind: str  # 'cuda' or 'cpu'
    call_peak_bytes: int  # peak bytes allocated by the call on top of what was live before it
    reserved_bytes: int | None  # CUDA: bytes the call made the caching allocator reserve at most; None on CPU
    grad_bytes: int | None = None  # bytes of the weight gradients the call left; None when no layer was watched


def measure_cuda(fn: Callable[[], R], device: torch.device) -> tuple[R, MemoryMeasurement]:
    """The cache is emptied first, so the reserved figure is what this call needed from the driver beyond the
    segments live tensors hold, not what earlier calls happened to leave cached (which would make it 0 for every
    row after the first that fits, and depend on the order of the rows)."""
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    allocated, reserved = torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device)
    result = fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - allocated
    return result, MemoryMeasurement("cuda", peak, torch.cuda.max_memory_reserved(device) - reserved)


def measure_cpu(fn: Callable[[], R]) -> tuple[R, MemoryMeasurement]:
    """Replays the profiler's [memory] events in time order; the peak of their running sum is the call's peak.

    torch.autograd.profiler.profile, the profiler that torch.profiler.profile wraps, records the same events:
    the wrapper's start asks `hasattr(torch, "_inductor")`, which imports torch._inductor and dynamo (about 2 s
    of every worker's first point on two cores, torch 2.13)."""
    with _quiet_native_stderr(), profile(use_cpu=True, profile_memory=True) as prof:
        result = fn()
    events = [e for e in prof.kineto_results.events() if e.name() == "[memory]" and e.device_type().name == "CPU"]
    running = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        running += e.nbytes()
        peak = max(peak, running)
    return result, MemoryMeasurement("cpu", peak, None)


def available_bytes(device: torch.device) -> int | None:
    """Memory a new allocation can take now, or None if unknown. CUDA: the driver's free bytes plus the free
    blocks torch's caching allocator holds (reserved - allocated), which it hands out before asking the driver;
    an upper bound, as a fragmented cache may not fit one large block. CPU: the kernel's MemAvailable."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def measure_memory(fn: Callable[[], R], device: torch.device, layer: nn.Module) -> tuple[R, MemoryMeasurement]:
    """Runs `fn` once; returns its result and the memory it needed on top of what was already live, with the
    bytes of the weight gradients it left on `layer` (0 in forward mode) counted apart."""
    with _gradient_bytes(layer) as sizes:
        result, memory = measure_cuda(fn, device) if device.type == "cuda" else measure_cpu(fn)
    return result, replace(memory, grad_bytes=sum(sizes.values()))


@contextlib.contextmanager
def _gradient_bytes(layer: nn.Module) -> Iterator[dict[int, int]]:
    """{id(parameter): bytes of its p.grad} as each gradient is accumulated: read in a hook, because a train call
    (suites/calls.py) drops its gradients before it returns. A parameter the call never reached has none."""
    sizes: dict[int, int] = {}

    def record(p: torch.Tensor) -> None:
        sizes[id(p)] = p.grad.numel() * p.grad.element_size()

    handles = [p.register_post_accumulate_grad_hook(record) for p in layer.parameters() if p.requires_grad]
    try:
        yield sizes
    finally:
        for h in handles:
            h.remove()


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
