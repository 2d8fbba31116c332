"""Key rows of the `gpu` suite (a decode-sized and a prefill-sized token count per model) on CUDA."""

import pytest
import torch

from suites.benchmarks.points import benchmark_call, suite_rows, synchronized_timer, watched

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="the gpu suite needs a CUDA device")


@pytest.mark.benchmark(group="gpu", timer=synchronized_timer)
@pytest.mark.parametrize("point,impl", suite_rows("gpu", keep=lambda p: p.tokens in (16, 4096, 8192)))
def test_gpu(benchmark, point, impl):
    watched(benchmark, *benchmark_call(point, impl), rounds=20, warmup=3)
