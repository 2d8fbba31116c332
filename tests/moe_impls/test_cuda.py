"""On a GPU, in bf16 at a 16-byte-aligned shape: sort_group runs torch's grouped_mm kernels in forward and in
backward, and the capturable layers replay in a CUDA graph. Skipped without CUDA.

Each test fails when its path did not run: a sort_group that fell back to its per-segment loop dispatches no
aten._grouped_mm (counted by the profiler and by suites/counters.py), and a graph that did not really replay
cannot produce the output of an input written after the capture.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import moe_impls
from moe_impls import MoEConfig, MoEWeights
from moe_impls.sort_group import grouped_mm_supported
from suites.calls import call_for_timing
from suites.counters import count

pytestmark = pytest.mark.gpu

# suites/configs/gpu-smoke.toml's shape: rows of 512 and 256 bf16 are multiples of 16 bytes, so grouped_mm runs
CFG = MoEConfig(d_model=512, d_ff=256, num_experts=8, top_k=2)
BF16 = torch.bfloat16


def _layer(name: str) -> torch.nn.Module:
    return moe_impls.get(name)(MoEWeights(CFG, device="cuda", dtype=BF16, seed=0))


def _input(tokens: int, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator(device="cuda").manual_seed(seed)
    return torch.randn(tokens, CFG.d_model, device="cuda", dtype=BF16, generator=gen)


@contextmanager
def _grouped_mm_us() -> Iterator[list[float]]:
    """Filled on exit: GPU microseconds of each aten::_grouped_mm dispatched inside (its kernels and its children's)."""
    found: list[float] = []
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        yield found
        torch.cuda.synchronize()
    found += [e.device_time_total for e in prof.events() if e.name == "aten::_grouped_mm"]


def test_sort_group_runs_grouped_mm_kernels_in_forward_and_backward():
    """Two grouped GEMMs forward; backward, each one's input and weight gradient is a grouped GEMM too (4)."""
    layer = _layer("sort_group")
    experts = layer.weights.experts
    assert grouped_mm_supported(experts.w_in_EHD[0], experts.w_in_EHD)
    assert grouped_mm_supported(experts.w_out_EDF[0], experts.w_out_EDF)
    x = _input(256).requires_grad_()
    grad_out = torch.randn_like(x)
    layer(x)[0].backward(grad_out)  # first-call set-up (cuBLAS, CUTLASS) outside the profiles
    with _grouped_mm_us() as forward:
        y, _ = layer(x)
    with _grouped_mm_us() as backward:
        y.backward(grad_out)
    assert len(forward) == 2 and all(us > 0 for us in forward), forward
    assert len(backward) == 4 and all(us > 0 for us in backward), backward


@pytest.mark.parametrize(("mode", "expected"), [("forward", 2), ("train", 6)])
def test_counted_grouped_mm_calls_on_cuda(mode, expected):
    """The result column the runner writes, from the same call the timers repeat."""
    x = _input(256)
    call, setup = call_for_timing(_layer("sort_group"), x, torch.randn_like(x), mode)
    call()
    setup()
    assert count(call, setup).grouped_mm_calls == expected


@pytest.mark.parametrize("name", ["sort_group", "dense_all"])
def test_capturable_layers_never_sync_and_replay_in_a_cuda_graph(name):
    layer = _layer(name)
    assert layer.capturable
    x = _input(64)
    with torch.no_grad():
        layer(x)
        torch.cuda.set_sync_debug_mode("error")  # any host read inside forward raises
        try:
            layer(x)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            layer(x)
        torch.cuda.current_stream().wait_stream(stream)
        with torch.cuda.graph(graph):
            out, _ = layer(x)
        fresh = _input(64, seed=2)
        expected, _ = layer(fresh)
        x.copy_(fresh)  # written after the capture: only a replay that reads x computes `expected`
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, expected)
