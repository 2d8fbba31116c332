"""The device's own ceilings, measured once per run: a large dense matmul per dtype and a large copy.

Every point is placed against these, never against a datasheet: clocks, power caps and the CPU's thread
count all change them.
"""

from __future__ import annotations

import torch

from suites.timing import time_fn
from suites.timing_settings import TimingSettings

PEAK_TIMING = TimingSettings(budget_ms=300, min_time_ms=100, warmup_ms=30, min_reps=3, rel_iqr_target=0.02)


def matmul_tflops(device: torch.device, dtype: torch.dtype) -> float:
    """Best-of-samples TFLOP/s of an n x n matmul (n = 8192 on CUDA, 1024 on CPU)."""
    n = 8192 if device.type == "cuda" else 1024
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device, dtype)
    b = torch.randn(n, n, generator=gen).to(device, dtype)
    timing = time_fn(lambda: torch.mm(a, b), device, PEAK_TIMING)
    return 2 * n**3 / (min(timing.samples_ms) * 1e-3) / 1e12


def bandwidth_gbs(device: torch.device) -> float:
    """Best-of-samples GB/s of copying a buffer far larger than the caches (bytes read + bytes written)."""
    nbytes = 1 << 30 if device.type == "cuda" else 1 << 26
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    timing = time_fn(lambda: dst.copy_(src), device, PEAK_TIMING)
    return 2 * nbytes / (min(timing.samples_ms) * 1e-3) / 1e9


def measure_peaks(device: torch.device, dtypes: list[torch.dtype]) -> dict:
    return {
        "matmul_tflops": {str(dt).removeprefix("torch."): matmul_tflops(device, dt) for dt in dtypes},
        "bandwidth_gbs": bandwidth_gbs(device),
        "method": "best sample of a square matmul per dtype and of a large device-to-device copy",
    }
