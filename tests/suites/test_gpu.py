"""The CUDA paths for real: events, graphs, L2 flush, allocator stats, NVML. Skipped without a GPU."""

from pathlib import Path

import pandas as pd
import pytest
import torch

from suites import spec
from suites.nvml import NVML
from suites.runner import Runner
from suites.timing import TimingSettings, time_fn

pytestmark = pytest.mark.gpu


def test_cuda_event_timer_measures_a_known_kernel():
    a = torch.randn(4096, 4096, device="cuda")
    settings = TimingSettings(budget_ms=200, min_time_ms=20, warmup_ms=5)
    eager = time_fn(lambda: a @ a, a.device, settings)
    graphed = time_fn(lambda: a @ a, a.device, TimingSettings(**{**settings.__dict__, "cuda_graph": True}))
    assert eager.timer == "cuda_event" and graphed.timer == "cuda_graph" and graphed.note is None
    assert 0.01 < eager.stats.median < 100 and 0.01 < graphed.stats.median < 100


def test_nvml_reads_the_real_gpu():
    nvml = NVML(torch.device("cuda", torch.cuda.current_device()))
    info = nvml.info()
    assert info["available"], nvml.reason
    assert info["name"] and info["memory_total_bytes"] > 0


def test_tiny_suite_on_cuda(tmp_path):
    suite = spec.load(str(Path(__file__).parent / "data" / "tiny.toml"))
    Runner(suite, torch.device("cuda"), tmp_path, progress=False).run()
    df = pd.read_json(tmp_path / "results.jsonl", lines=True)
    assert set(df["status"]) == {"ok"}
    assert set(df["mem_kind"]) == {"cuda"} and (df["reserved_mem_bytes"] > 0).all()
    assert set(df["timer"]) <= {"cuda_event", "cuda_graph"}
    assert df["energy_j"].notna().any() or df["energy_note"].notna().all()
