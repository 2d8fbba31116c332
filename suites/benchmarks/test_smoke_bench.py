"""Every row of the `smoke` suite as a pytest-benchmark benchmark (CPU or GPU)."""

import pytest

from suites.benchmarks.points import benchmark_call, suite_rows, synchronized_timer, watched


@pytest.mark.benchmark(group="smoke", timer=synchronized_timer, min_rounds=10, warmup=True)
@pytest.mark.parametrize("point,impl", suite_rows("smoke"))
def test_smoke(benchmark, point, impl):
    watched(benchmark, *benchmark_call(point, impl), rounds=20, warmup=2)
