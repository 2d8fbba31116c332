"""Statistics, timers, memory and NVML against quantities known in advance."""

import gc
import sys
import time
import types

import pytest
import torch

from suites.memory import measure_cpu
from suites.nvml import NVML
from suites.stats import Stats
from suites.timing import RowCalls, time_fn, time_rows
from suites.timing_settings import TimingSettings


def test_stats_by_hand():
    # sorted [1, 2, 3, 4, 100]: median 3; p10 at position 0.4 -> 1.4; p25 = 2, p75 = 4 -> IQR 2; mean 22
    s = Stats.of([4.0, 100.0, 1.0, 3.0, 2.0])
    assert (s.n, s.median, s.mean, s.min, s.iqr) == (5, 3.0, 22.0, 1.0, 2.0)
    assert s.p10 == pytest.approx(1.4) and s.p90 == pytest.approx(61.6) and s.p99 == pytest.approx(96.16)
    assert s.rel_iqr == pytest.approx(2 / 3)
    assert Stats.of([5.0]).p90 == 5.0


def test_cpu_timer_measures_a_sleep_of_known_length():
    settings = TimingSettings(budget_ms=200, min_time_ms=30, warmup_ms=1, min_reps=5, rel_iqr_target=0.5)
    timing = time_fn(lambda: time.sleep(0.004), torch.device("cpu"), settings)
    stats = timing.stats
    assert stats.n == len(timing.samples_ms) >= 5
    assert stats.min >= 4.0 and 4.0 <= stats.median < 30.0  # a sleep never ends early; a loaded machine adds a little


def test_cpu_timer_stops_on_budget_and_keeps_reset_out_of_the_samples():
    settings = TimingSettings(budget_ms=60, min_time_ms=1000, warmup_ms=0, min_reps=2, rel_iqr_target=0.0)
    start = time.perf_counter()
    timing = time_fn(lambda: time.sleep(0.001), torch.device("cpu"), settings, reset=lambda: time.sleep(0.01))
    assert time.perf_counter() - start < 1.0  # the budget, not min_time or a zero IQR target, ended it
    assert max(timing.samples_ms) < 9.0, "the reset's 10 ms sleep leaked into a sample"


def test_cpu_memory_sees_a_known_allocation():
    def allocate():
        a = torch.empty(2_000_000, dtype=torch.float32)  # 8 MB
        b = torch.empty(1_000_000, dtype=torch.float32)  # 4 MB, live together with a
        del a
        return b

    result, mem = measure_cpu(allocate)
    assert mem.kind == "cpu" and result.numel() == 1_000_000
    assert 12_000_000 <= mem.call_peak_bytes < 12_100_000


def test_nvml_unavailable_is_recorded_not_raised(monkeypatch):
    cpu = NVML(torch.device("cpu"))
    assert cpu.info() == {"available": False, "reason": "not a CUDA device"}
    assert cpu.measure_energy(lambda: None, 100).joules_per_call is None
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` now raises ImportError
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: types.SimpleNamespace(pci_bus_id=None))
    missing = NVML(torch.device("cuda", 0))
    assert not missing.available and "import of pynvml" in missing.reason
    assert missing.info()["available"] is False


def test_nvml_energy_arithmetic_with_a_fake_counter(monkeypatch):
    # CPU cannot reach NVML: a fake driver whose energy counter rises 50 mJ per call stands in for it.
    # The same path runs for real on a GPU machine (tests/suites/test_gpu.py).
    counter = {"mj": 1000}

    def energy(handle):
        return counter["mj"]

    fake = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetHandleByIndex=lambda i: "h",
        nvmlDeviceGetTotalEnergyConsumption=energy,
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: types.SimpleNamespace(pci_bus_id=None))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    nvml = NVML(torch.device("cuda", 0))
    assert nvml.available

    def call():
        counter["mj"] += 50

    result = nvml.measure_energy(call, min_ms=5)
    assert result.joules_per_call == pytest.approx(0.050) and result.note is None
    frozen = nvml.measure_energy(lambda: None, min_ms=1)
    assert frozen.joules_per_call is None and "did not move" in frozen.note


def test_rows_of_a_point_are_timed_round_robin_and_a_failing_row_stops_alone():
    order = []

    def row(name, seconds):
        def call():
            order.append(name)
            time.sleep(seconds)

        return RowCalls([call])

    def broken():
        order.append("broken")
        if order.count("broken") > 5:  # two warm-up calls, then fails in its second round
            raise RuntimeError("kernel exploded")

    # block_ms this small: a block is one untimed re-entry call and one timed call
    settings = TimingSettings(budget_ms=100, min_time_ms=20, warmup_ms=0, min_reps=6, rel_iqr_target=0.5, block_ms=1e-6)
    timings = time_rows(
        {"fast": row("fast", 0.002), "slow": row("slow", 0.004), "broken": RowCalls([broken])},
        torch.device("cpu"),
        settings,
    )
    assert 2.0 <= timings["fast"].stats.median < timings["slow"].stats.median
    assert isinstance(timings["broken"].error, RuntimeError) and timings["fast"].error is None
    assert len(timings["broken"].samples_ms) == 1, "the sample of its first round is kept"
    rounds = [order[6 + 6 * r : 12 + 6 * r] for r in range(2)]  # after each row's two warm-up calls
    for r in rounds:
        assert [r[i] == r[i + 1] for i in (0, 2, 4)] == [True] * 3, "a row's calls of one round run as a block"
        assert sorted(r[::2]) == ["broken", "fast", "slow"], "each round runs every row"
    assert rounds[0][0] != rounds[1][0], "each round starts with a different row"
    third = order[18:22]
    assert sorted(third[::2]) == ["fast", "slow"], "the failed row dropped out; the others went on"


def test_blocks_fill_block_ms_and_cold_rows_of_a_pool_rotate_over_its_copies():
    used = []
    calls = [lambda i=i: used.append(i) for i in range(4)]
    settings = TimingSettings(budget_ms=50, min_time_ms=5, warmup_ms=1, min_reps=40, max_reps=40, block_ms=1.0)
    timings = time_rows({"a": RowCalls(calls, pool="p"), "b": RowCalls(calls, pool="p")}, torch.device("cpu"), settings)
    assert len(timings["a"].samples_ms) >= 40 and len(timings["b"].samples_ms) >= 40
    assert all(used[i + 1] == (used[i] + 1) % 4 for i in range(len(used) - 1)), "one rotation over both rows"
    warm = TimingSettings(**{**settings.__dict__, "cache": "warm"})
    used.clear()
    time_rows({"a": RowCalls(calls, pool="p")}, torch.device("cpu"), warm)
    assert set(used) == {0}, "warm: every call on the first copy"


def test_the_garbage_collector_is_off_while_rows_are_timed_and_restored_after():
    seen = []
    settings = TimingSettings(budget_ms=10, min_time_ms=1, warmup_ms=1, min_reps=3, max_reps=3)
    time_rows({"a": RowCalls([lambda: seen.append(gc.isenabled())])}, torch.device("cpu"), settings)
    assert seen and not any(seen), "a collection in a call would cost in proportion to every object alive"
    assert gc.isenabled()
    gc.disable()
    try:
        time_rows({"a": RowCalls([lambda: None])}, torch.device("cpu"), settings)
        assert not gc.isenabled(), "a caller's own setting is left as it was"
    finally:
        gc.enable()


def test_nvml_finds_the_gpu_by_its_pci_address(monkeypatch):
    # torch reports the PCI address as integers; NVML wants "domain:bus:device.0" in hex.
    asked = []
    fake = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetHandleByPciBusId=lambda bus_id: asked.append(bus_id) or "by-pci",
        nvmlDeviceGetHandleByIndex=lambda i: "by-index",
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    props = types.SimpleNamespace(pci_domain_id=0, pci_bus_id=0x19, pci_device_id=0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: props)
    assert NVML(torch.device("cuda", 3)).handle == "by-pci" and asked == ["00000000:19:00.0"]


def test_energy_of_a_graph_timed_row_is_measured_on_the_replay_that_was_timed():
    """A row timed by replaying its CUDA graph has its joules measured on that replay, not on the eager call (with
    the launch overhead and idle power its latency left out). NVML's loop is faked: CPU cannot reach a GPU's
    counter; test_gpu.py measures it for real."""
    from types import SimpleNamespace

    from suites.figures import energy_columns
    from suites.timing import RowTiming

    ran: list[str] = []

    class GpuNvml:
        device = torch.device("cuda", 0)

        def measure_energy(self, step, min_ms):
            step()
            return SimpleNamespace(joules_per_call=2.0, note=None)

    row = SimpleNamespace(calls=SimpleNamespace(calls=[lambda: ran.append("eager")], resets=None))
    graphed = RowTiming([1.0], "cuda_graph", replay=lambda: ran.append("replay"))
    assert energy_columns(row, graphed, GpuNvml(), 100, 4) == {
        "energy_j": 2.0,
        "joules_per_token": 0.5,
        "energy_note": None,
    }
    energy_columns(row, RowTiming([1.0], "cuda_event"), GpuNvml(), 100, 4)
    assert ran == ["replay", "eager"]
