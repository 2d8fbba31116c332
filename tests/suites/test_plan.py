"""`--plan` predicts without running: its memory against the CPU runner's own measurement, its skip rule against
the runner's, and its timing protocol against the suite's [timing] table."""

import dataclasses

import pytest
import torch

from analysis import devices, footprint
from suites import fit, plan, spec
from suites.timing_settings import TimingSettings
from suites.worker import Worker, WorkerSpec

QUICK = TimingSettings(budget_ms=5, min_time_ms=1, warmup_ms=1, retimes=0, energy_ms=0)


@pytest.fixture(scope="module")
def measured():
    """Every smoke row, checked and timed briefly by a worker as a run would."""
    suite = spec.load("smoke")
    worker = Worker(WorkerSpec("cpu", torch.get_num_threads(), suite.seed, QUICK))
    worker.start()
    try:
        rows = [r for p in suite.points for r in worker.run_point(p, [*suite.impls, *suite.baselines], None)]
    finally:
        worker.close()
    return suite, {(r["point_id"], r["impl"]): r for r in rows}


def test_predicted_peak_memory_is_within_15_percent_of_the_cpu_runners_measurement(measured):
    suite, rows = measured
    cpu = devices.measured("cpu", 64 * 2**30, {"float32": 1.0}, 10.0)
    planned = plan.plan(suite, cpu).rows
    assert len(planned) == len(rows) == len(suite.points) * (len(suite.impls) + len(suite.baselines))
    for r in planned:
        got = rows[(r.point.point_id, r.impl)]
        assert got["status"] == "ok", got["error"]
        ratio = r.peak_bytes / got["peak_mem_bytes"]
        assert abs(ratio - 1) <= 0.15, f"{plan.label(r.point)} {r.impl}: predicted / measured = {ratio:.3f}"


def test_a_row_that_would_not_fit_is_skipped_with_the_runners_reason():
    suite = spec.load("gpu")
    small = dataclasses.replace(devices.profile("h100-80gb"), memory_bytes=20 * 10**9, name="tiny")
    planned = plan.plan(suite, small)
    skipped = [r for r in planned.rows if r.skip]
    assert skipped and all("GB" in r.skip and "\n" not in r.skip for r in skipped)
    deepseek = [r for r in skipped if r.point.shape == "deepseek-v3"]
    assert deepseek and all("exceed" in r.skip for r in deepseek), "DeepSeek's weights alone are over 20 GB"
    assert all(r.wall_s == 0 for r in skipped)


def test_the_wall_time_follows_the_timing_budget():
    suite = spec.load("smoke")
    cpu = devices.measured("cpu", 64 * 2**30, {"float32": 1.0}, 10.0)
    short = plan.plan(suite, cpu)
    longer = plan.plan(dataclasses.replace(suite, timing=dataclasses.replace(suite.timing, budget_ms=6000)), cpu)
    rows = len(short.rows)
    assert longer.wall_s - short.wall_s >= rows * (6000 - suite.timing.budget_ms) / 1e3
    assert "predicted wall time at most" in plan.render(short)


def test_a_synthetic_routing_plans_its_exact_largest_load():
    point = next(p for p in spec.load("skew").points if p.routing.startswith("hot"))
    cfg = point.moe_config()
    assert fit.max_load(point) > footprint.expected_max_load(point.tokens, cfg.num_experts, cfg.top_k)


def test_an_unknown_device_profile_is_one_line():
    with pytest.raises(KeyError, match="unknown device profile 'h900'; known: h100-80gb") as err:
        devices.profile("h900")
    assert "\n" not in str(err.value)


def test_the_cli_plans_without_running_and_refuses_an_unknown_profile(tmp_path, capsys, monkeypatch):
    from suites import cli

    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "gpu", "--plan", "--plan-device", "h100-80gb"]) == 0
    out = capsys.readouterr().out
    assert "plan: suite gpu on h100-80gb" in out and "deepseek-v3 T=16384" in out and "wall time at most" in out
    assert not any(tmp_path.iterdir()), "a plan writes nothing"
    assert cli.main(["run", "smoke", "--plan", "--plan-device", "h900"]) == 2
    assert "unknown device profile 'h900'" in capsys.readouterr().err
