"""Building one benchmarkable row of a suite point, checked against the reference first, as the runner does."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import torch

import moe_impls
from moe_impls import MoEWeights
from suites import spec
from suites.calls import call_for_timing, check_call
from suites.nvml import NVML
from suites.reference import error_and_tolerance, reference_layer
from suites.steadiness import Thresholds, Window, cpu_verdict, gpu_verdict
from suites.suite_model import Point
from suites.timing_settings import TimingSettings

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronized_timer() -> float:
    """perf_counter after the GPU has drained its queue, so pytest-benchmark times real GPU work."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def suite_rows(name: str, keep: Callable[[Point], bool] = lambda p: True) -> list:
    suite = spec.load(name)
    rows = [(p, impl) for p in suite.points if keep(p) for impl in (*suite.impls, *suite.baselines)]
    return [
        pytest.param(p, impl, id=f"{p.shape}-T{p.tokens}-{p.dtype}-{p.mode}-{p.routing}-{impl}") for p, impl in rows
    ]


def watched(benchmark, call: Callable[[], object], reset: Callable[[], None], rounds: int, warmup: int) -> None:
    """benchmark.pedantic, with the machine's steadiness over its rounds in `extra_info` (suites/steadiness.py),
    so a saved pytest-benchmark run carries the same signals, and verdict, as a runner row."""
    nvml = NVML(DEVICE)
    before, window = nvml.clock_state(), Window().start()
    benchmark.pedantic(call, setup=reset, rounds=rounds, warmup_rounds=warmup)
    window.stop()
    gpu, gpu_reasons = gpu_verdict(before, nvml.clock_state())
    reasons = cpu_verdict(window, Thresholds.of(TimingSettings())) + gpu_reasons
    benchmark.extra_info.update({**window.signals, **gpu, "disturbed": bool(reasons), "disturbance": reasons})


def benchmark_call(point: Point, impl: str) -> tuple[Callable[[], object], Callable[[], None]]:
    """The timed call and its reset (pytest-benchmark runs it as each round's setup), after the implementation's
    output has matched the reference the runner uses, within the runner's tolerance."""
    cfg = point.moe_config()
    dtype = getattr(torch, point.dtype)
    gen = torch.Generator().manual_seed(point.seed)
    x = torch.randn(point.tokens, point.d_model, generator=gen).to(DEVICE, dtype)
    grad_out = torch.randn(point.tokens, point.d_model, generator=gen).to(DEVICE, dtype)
    if impl in moe_impls.DENSE_BASELINES:
        module = moe_impls.BASELINES[impl](cfg, device=DEVICE, dtype=dtype, seed=point.seed)
    else:
        weights = MoEWeights(cfg, device=DEVICE, dtype=dtype, seed=point.seed)
        module = moe_impls.resolve(impl)(weights)  # built-ins, peers, +compile and plug-ins alike
        _, reference = reference_layer(weights, x)
        ref_out, ref_grad, _ = check_call(reference, x, grad_out, point.mode)
        out, grad, _ = check_call(module, x, grad_out, point.mode)
        err, tolerance = error_and_tolerance(out, grad, ref_out, ref_grad, point.dtype)
        assert err <= tolerance, f"{impl} is wrong: max error {err:.3g} > {tolerance:.3g}"
    return call_for_timing(module, x, grad_out, point.mode)
