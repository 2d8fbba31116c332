"""The gpu-smoke verdict says a CUDA path ran only when a row shows it: CPU rows of the smoke shape (real, from
the runner) reach grouped_mm and nothing else; rows that show every path give a clean verdict."""

from pathlib import Path

import pandas as pd
import pytest

from reports import cuda_paths
from suites import point_runner, spec
from suites.timing_settings import TimingSettings
from suites.worker import WorkerSpec

PATHS = Path(__file__).parents[1] / "suites" / "data" / "gpu_paths.toml"
QUICK = TimingSettings(budget_ms=5, min_time_ms=1, warmup_ms=1, retimes=0, energy_ms=0)
PEAKS = {"matmul_tflops": {"float32": 1.0, "bfloat16": 1.0}, "bandwidth_gbs": 10.0}


@pytest.fixture(scope="module")
def cpu_rows() -> pd.DataFrame:
    suite = spec.load(str(PATHS))
    runner = point_runner.PointRunner(WorkerSpec("cpu", 1, suite.seed, QUICK, peaks=PEAKS))
    return pd.DataFrame([r for p in suite.points for r in runner.run(p, ["sort_group", "loop", "param_matched"])])


def _outcomes(found: list[cuda_paths.CudaPath]) -> dict[str, str]:
    return {p.name: p.outcome for p in found}


def test_cpu_rows_reach_grouped_mm_and_no_cuda_only_path(cpu_rows):
    assert (cpu_rows["status"] == "ok").all(), cpu_rows["error"].tolist()
    found = cuda_paths.paths(cpu_rows, gpus=1, second_gpu=None, nccl=None)
    outcomes = _outcomes(found)
    assert outcomes["grouped_mm forward, bf16"] == outcomes["grouped_mm forward and backward, bf16"] == "ran"
    for name in ("CUDA-graph capture and replay", "L2 flush before every timed call", "NVML energy"):
        assert outcomes[name] == "FAILED", name
    assert outcomes["cuda:1"] == outcomes["NCCL, 2 ranks"] == "n/a"
    text = cuda_paths.render(found, "cpu")
    assert "verdict: 3 path(s) did not run" in text and len(text.splitlines()) <= 12
    assert not cuda_paths.all_ran(found)


def _gpu_like(cpu_rows: pd.DataFrame) -> pd.DataFrame:
    """The CPU rows as a GPU run that reached every path would write them."""
    rows = cpu_rows.copy()
    rows["timer"] = rows["mode"].map({"forward": "cuda_graph", "train": "cuda_event"})
    rows["l2_flushed"] = True
    rows["energy_j"] = 0.002
    return rows


def test_rows_that_show_every_path_give_a_clean_verdict(cpu_rows):
    ep = pd.DataFrame({"status": ["ok", "ok"]})
    found = cuda_paths.paths(_gpu_like(cpu_rows), gpus=2, second_gpu=ep, nccl=ep)
    assert cuda_paths.all_ran(found), cuda_paths.render(found, "gpu")
    assert cuda_paths.render(found, "gpu").endswith("verdict: all ran")


def test_the_grouped_mm_fallback_and_a_missing_second_gpu_run_are_failures(cpu_rows):
    rows = _gpu_like(cpu_rows)
    rows.loc[rows["impl"] == "sort_group", "grouped_mm_calls"] = 0  # the per-segment loop computed the same
    outcomes = _outcomes(cuda_paths.paths(rows, gpus=2, second_gpu=None, nccl=pd.DataFrame({"status": ["error"]})))
    assert outcomes["grouped_mm forward, bf16"] == outcomes["grouped_mm forward and backward, bf16"] == "FAILED"
    assert outcomes["cuda:1"] == outcomes["NCCL, 2 ranks"] == "FAILED"


def test_gpu_smoke_without_cuda_is_one_line(capsys):
    from suites.cli import main

    assert main(["gpu-smoke"]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs a CUDA device" in err and "\n" not in err
