"""Weights drawn on the device, kept per shape, and the one fit rule: the runner skips a row whose call would not
fit (built-in implementations by their footprint model, dense baselines too), a baseline never crowds an
implementation, and `--plan` applies the same rule."""

import dataclasses
from pathlib import Path

import pytest
import torch

from analysis import devices
from moe_impls import DenseFFN, MoEConfig, MoEWeights
from suites import fit, plan, point_runner, shape_cache, spec
from suites.memory import measure_cpu
from suites.timing_settings import TimingSettings
from suites.worker import WorkerSpec

QUICK = TimingSettings(budget_ms=5, min_time_ms=1, warmup_ms=1, retimes=0, energy_ms=0)
PEAKS = {"matmul_tflops": {"float32": 1.0}, "bandwidth_gbs": 10.0}
TINY = Path(__file__).parent / "data" / "tiny.toml"
GB = 10**9


def test_weights_are_drawn_in_place_without_a_staging_copy():
    cfg = MoEConfig(d_model=64, d_ff=128, num_experts=8, top_k=2)
    weights = MoEWeights(cfg, dtype=torch.bfloat16, seed=None)
    _, drawn = measure_cpu(lambda: weights.reset_parameters(3))
    _, dense = measure_cpu(lambda: DenseFFN(64, 1024, dtype=torch.bfloat16, seed=3))
    dense_bytes = sum(p.numel() * p.element_size() for p in DenseFFN(64, 1024, dtype=torch.bfloat16).parameters())
    assert drawn.call_peak_bytes < 0.01 * weights.nbytes(), "an fp32 copy on the host was made and cast"
    assert dense.call_peak_bytes <= 1.01 * dense_bytes
    again = MoEWeights(cfg, dtype=torch.bfloat16, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(weights.parameters(), again.parameters()))
    assert weights.experts.down_proj.float().std().item() == pytest.approx(128**-0.5, rel=0.05)


def _runner() -> point_runner.PointRunner:
    return point_runner.PointRunner(WorkerSpec("cpu", 1, 0, QUICK, peaks=PEAKS))


def test_a_shapes_baselines_are_built_once_and_kept_across_its_points():
    suite = spec.load(str(TINY))
    runner = _runner()
    seen: dict[str, set[int]] = {}
    points = [p for p in suite.points if p.shape == suite.points[0].shape]
    assert len({(p.tokens, p.mode) for p in points}) > 1
    for point in points:
        rows = list(runner.run(point, ["sort_group", "param_matched"]))
        assert [r["status"] for r in rows] == ["ok", "ok"], rows
        for key, layer in runner.shapes.baselines.items():
            seen.setdefault(key[0], set()).add(id(layer))
    assert {name: len(ids) for name, ids in seen.items()} == {"param_matched": 1}


def test_the_runner_skips_a_built_in_whose_footprint_would_not_fit(monkeypatch):
    point = spec.load(str(TINY)).points[0]
    monkeypatch.setattr(shape_cache, "available_bytes", lambda device: 1000)
    rows = {r["impl"]: r for r in _runner().run(point, ["sort_group", "padded", "flop_matched"])}
    for name, row in rows.items():
        assert row["status"] == "skipped" and "predicted" in row["error"] and "GB" in row["error"], name
        assert row["predicted_mem_bytes"] > 1000, name


def test_a_baseline_whose_weights_would_crowd_an_implementation_is_skipped_and_evicted(monkeypatch):
    point = spec.load(str(TINY)).points[0]
    runner = _runner()
    first = {r["impl"]: r for r in runner.run(point, ["sort_group", "param_matched"])}
    assert [r["status"] for r in first.values()] == ["ok", "ok"] and runner.shapes.baselines
    moe_call, dense_weights = first["sort_group"]["predicted_mem_bytes"], first["param_matched"]["weight_bytes"]
    # sort_group fits alone, not beside the baseline's weights; the kept baseline's bytes count as free
    total = int(moe_call / fit.MEMORY_HEADROOM + dense_weights / 2)
    monkeypatch.setattr(shape_cache, "available_bytes", lambda device: total - dense_weights)
    rows = {r["impl"]: r for r in runner.run(point, ["sort_group", "param_matched"])}
    assert rows["sort_group"]["status"] == "ok"
    assert rows["param_matched"]["status"] == "skipped" and "GB" in rows["param_matched"]["error"]
    assert runner.shapes.baselines == {}


def test_decide_keeps_baselines_in_order_while_the_largest_implementation_still_fits():
    dense = {"a": fit.Baseline(weight_bytes=3 * GB, call_bytes=1 * GB), "b": fit.Baseline(3 * GB, 1 * GB)}
    skips = fit.decide(10 * GB, {"x": 4 * GB, "huge": 50 * GB}, dense, "free")
    assert skips["x"] is None and "predicted 50 GB" in skips["huge"]
    assert skips["a"] is None, "x needs 4 GB; 7 GB remain after a's weights"
    assert "too little" in skips["b"] and "x's call (4 GB)" in skips["b"], "4 GB left after a and b: x needs 5 GB"
    assert fit.decide(None, {"x": 4 * GB}, dense, "free") == {"x": None, "a": None, "b": None}


def test_the_gpu_suite_plans_under_ten_minutes_on_an_h100_and_never_plans_a_row_that_cannot_fit():
    suite = spec.load("gpu")
    h100 = devices.profile("h100-80gb")
    planned = plan.plan(suite, h100)
    assert planned.wall_s < 600, plan.render(planned).splitlines()[-1]
    ran = [r for r in planned.rows if r.skip is None]
    assert len(ran) > 0.9 * len(planned.rows)
    assert all(r.peak_bytes is None or r.peak_bytes < h100.memory_bytes for r in ran)
    small = plan.plan(suite, dataclasses.replace(h100, memory_bytes=40 * GB))
    assert sum(r.skip is not None for r in small.rows) > sum(r.skip is not None for r in planned.rows)
