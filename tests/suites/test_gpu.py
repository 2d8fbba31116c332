"""The CUDA paths for real: events, graphs, L2 flush, allocator stats, NVML energy, grouped_mm, a second GPU.
Skipped without a GPU.

The runner tests measure tests/suites/data/gpu_paths.toml once (bf16 at a grouped_mm-aligned shape, CUDA graphs
on, the energy loop on) and each fails when its path did not run: a capturable row timed eagerly, a row that was
not captured without a note saying why, no energy where NVML reads the counter, sort_group on its fallback loop.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pandas as pd
import pytest
import torch

from suites import spec
from suites.nvml import NVML
from suites.runner import Runner
from suites.timing import time_fn
from suites.timing_settings import TimingSettings

pytestmark = pytest.mark.gpu

SUITE = Path(__file__).parent / "data" / "gpu_paths.toml"
CAPTURABLE = {"sort_group", "dense_all", "param_matched", "flop_matched"}  # forward reads nothing back to the host
GROUPED_MM_CALLS = {"forward": 2, "train": 6}  # sort_group's: two grouped GEMMs, each with two in its backward


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("gpu_paths")
    Runner(spec.load(str(SUITE)), torch.device("cuda"), out, progress=False).run()
    return pd.read_json(out / "results.jsonl", lines=True)


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


def test_every_row_is_ok_and_measured_on_the_gpu(rows):
    assert len(rows) == 12 and set(rows["status"]) == {"ok"}, rows[["impl", "mode", "status", "error"]]
    assert set(rows["dtype"]) == {"bfloat16"} and set(rows["mem_kind"]) == {"cuda"}
    assert (rows["reserved_mem_bytes"] >= 0).all()  # 0: the call fit in the free space of live segments


def test_capturable_forward_rows_replay_a_cuda_graph(rows):
    graphed = rows[(rows["mode"] == "forward") & rows["impl"].isin(CAPTURABLE)]
    assert set(graphed["impl"]) == CAPTURABLE
    assert set(graphed["timer"]) == {"cuda_graph"}, graphed[["impl", "timer", "timer_note"]]
    assert graphed["timer_note"].isna().all(), graphed[["impl", "timer_note"]]


def test_rows_not_captured_say_why(rows):
    """loop and padded read expert counts back to the host; a train step is never captured."""
    eager = rows[(rows["mode"] == "train") | ~rows["impl"].isin(CAPTURABLE)]
    assert len(eager) == 8 and set(eager["timer"]) == {"cuda_event"}
    assert eager["timer_note"].str.contains("not CUDA-graph capturable", na=False).all(), eager[
        ["impl", "mode", "timer_note"]
    ]


def test_energy_is_measured_wherever_nvml_reads_the_counter(rows):
    """NVML failing quietly must not pass: where the test itself reads the counter, every row has joules."""
    if nvml_energy_readable(torch.device("cuda", torch.cuda.current_device())):
        assert (rows["energy_j"] > 0).all() and rows["energy_note"].isna().all(), rows[["impl", "energy_note"]]
    else:
        explained = rows["energy_note"].fillna("").str.len() > 0
        assert ((rows["energy_j"] > 0) | explained).all(), rows[["impl", "energy_j", "energy_note"]]


def test_sort_group_rows_ran_torchs_grouped_mm_and_no_other_row_did(rows):
    for _, row in rows.iterrows():
        expected = GROUPED_MM_CALLS[row["mode"]] if row["impl"] == "sort_group" else 0
        assert row["grouped_mm_calls"] == expected, (row["impl"], row["mode"], row["counters_note"])


def nvml_energy_readable(device: torch.device) -> bool:
    """Whether pynvml imports and reads the total-energy counter of `device`, found by its PCI address (torch's
    and NVML's indices differ under CUDA_VISIBLE_DEVICES) or, as suites/nvml.py falls back, by its index."""
    try:
        import pynvml
    except ImportError:
        return False
    props = torch.cuda.get_device_properties(device)
    bus_id = f"{props.pci_domain_id:08x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0"
    handles = (
        lambda: pynvml.nvmlDeviceGetHandleByPciBusId(bus_id),
        lambda: pynvml.nvmlDeviceGetHandleByIndex(device.index),
    )
    for handle in handles:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlInit()
            pynvml.nvmlDeviceGetTotalEnergyConsumption(handle())
            return True
    return False


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs: the run is asked for cuda:1")
def test_a_run_on_cuda_1_allocates_on_cuda_1_only(tmp_path):
    """Inline, so this process's allocator statistics show where the run's tensors went: device 1's cumulative
    allocations grow, device 0's do not, though device 0 was current when the run began."""
    suite = spec.load(str(SUITE))
    torch.cuda.set_device(0)
    before = [_allocated_bytes(i) for i in (0, 1)]
    try:
        Runner(suite, torch.device("cuda", 1), tmp_path, ["sort_group"], [], progress=False, isolate=False).run()
    finally:
        torch.cuda.set_device(0)  # the inline worker made cuda:1 current
    rows = pd.read_json(tmp_path / "results.jsonl", lines=True)
    assert set(rows["status"]) == {"ok"} and len(rows) == 2
    assert _allocated_bytes(1) > before[1]
    assert _allocated_bytes(0) == before[0]


def _allocated_bytes(index: int) -> int:
    """Bytes the caching allocator has handed out on GPU `index` since the process began (never reset here)."""
    return torch.cuda.memory_stats(index).get("allocated_bytes.all.allocated", 0)


def test_a_failed_capture_gives_back_the_callers_stream_and_names_its_cause():
    """A host read inside the capture breaks it; the worker's stream afterwards is the one it had, and the error
    says what broke the capture rather than capture_end's own failure."""
    from suites.cuda_timing import capture_graph

    x = torch.ones(8, device="cuda")
    before = torch.cuda.current_stream()
    with pytest.raises(RuntimeError) as raised:
        capture_graph(lambda: (x * 2).sum().item())
    torch.cuda.synchronize()
    assert torch.cuda.current_stream() == before
    assert "capture_end" not in str(raised.value) and str(raised.value)
