"""`moe-bench run --model` and [[models]]: a transformers model's own MoE block, its rows the experts
implementations (transformers' and ours), each checked against eager before it is timed. Tiny configs of real
families, written as config.json files, stand in for the real ones (same code, no download)."""

import json

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402

from moe_impls import hf_models  # noqa: E402
from suites import point_runner, spec  # noqa: E402
from suites.cli import main  # noqa: E402
from suites.model_rows import implementations  # noqa: E402
from suites.timing_settings import TimingSettings  # noqa: E402
from suites.worker import WorkerSpec  # noqa: E402

QUICK = TimingSettings(budget_ms=5, min_time_ms=1, warmup_ms=1, retimes=0, energy_ms=0)
PEAKS = {"matmul_tflops": {"float32": 1.0}, "bandwidth_gbs": 10.0}
FAMILIES = ("gpt_oss", "deepseek_v3")  # transposed weights, biases, a clamped gate; shared experts, group-limited top-k


def _config_file(tmp_path_factory, model_type: str) -> str:
    folder = tmp_path_factory.mktemp(model_type)
    hf_models.tiny_config(model_type).save_pretrained(folder)
    return str(folder / "config.json")


@pytest.mark.parametrize("model_type", FAMILIES)
def test_every_experts_implementation_of_a_models_block_matches_eager_and_is_timed(tmp_path_factory, model_type):
    path = _config_file(tmp_path_factory, model_type)
    suite = spec.model_suite(path, [7], ["float32"], ["forward", "train"], list(implementations("cpu")))
    assert {"eager", "grouped_mm", "batched_mm", "moe_bench_loop", "moe_bench_sort_group"} <= set(suite.model_impls)
    runner = point_runner.PointRunner(WorkerSpec("cpu", 1, suite.seed, QUICK, peaks=PEAKS))
    for point in suite.points:
        names = suite.row_names(point, [], list(suite.baselines))
        rows = {r["impl"]: r for r in runner.run(point, names)}
        assert set(rows) == set(names)
        for name, row in rows.items():
            assert row["status"] == "ok", f"{model_type} {point.mode} {name}: {row['error']}"
            assert row["model"] == path and row["routing"] == "model" and row["samples_ms"]
            if name in suite.model_impls:
                assert row["max_abs_err"] <= row["tolerance"]


def test_a_wrong_experts_implementation_is_wrong_not_timed(tmp_path_factory):
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS, grouped_mm_experts_forward

    def off_by_a_bit(module, hidden, top_k_index, top_k_weights):
        return grouped_mm_experts_forward(module, hidden, top_k_index, top_k_weights) * 1.01

    ALL_EXPERTS_FUNCTIONS.register("test_off_by_a_bit", off_by_a_bit)
    path = _config_file(tmp_path_factory, "mixtral")
    suite = spec.model_suite(path, [16], ["float32"], ["forward"], ["eager", "test_off_by_a_bit"])
    runner = point_runner.PointRunner(WorkerSpec("cpu", 1, suite.seed, QUICK, peaks=PEAKS))
    rows = {r["impl"]: r for r in runner.run(suite.points[0], list(suite.model_impls))}
    assert rows["eager"]["status"] == "ok"
    assert rows["test_off_by_a_bit"]["status"] == "wrong" and "eager" in rows["test_off_by_a_bit"]["error"]
    assert rows["test_off_by_a_bit"].get("samples_ms") is None


def test_a_suite_file_lists_models_beside_shapes(tmp_path_factory, tmp_path):
    path = _config_file(tmp_path_factory, "mixtral")
    suite_file = tmp_path / "mixed.toml"
    suite_file.write_text(
        f"""impls = ["sort_group"]
baselines = []
model_impls = ["grouped_mm", "moe_bench_sort_group"]
[[shapes]]
name = "s"
d_model = 16
d_ff = 8
num_experts = 4
top_k = 2
tokens = [4]
[[models]]
model = {json.dumps(path)}
name = "tiny-mixtral"
tokens = [4]
"""
    )
    suite = spec.load(str(suite_file))
    shape, model = suite.points
    assert suite.row_names(shape, list(suite.impls), []) == ["sort_group"]
    assert suite.row_names(model, list(suite.impls), []) == ["eager", "grouped_mm", "moe_bench_sort_group"]
    assert model.shape == "tiny-mixtral" and (model.d_model, model.num_experts, model.top_k) == (64, 8, 2)
    assert shape.point_id == spec.Point(**{**shape.__dict__}).point_id


def test_the_cli_runs_a_model_and_refuses_bad_model_arguments(tmp_path_factory, tmp_path, capsys):
    path = _config_file(tmp_path_factory, "mixtral")
    out = tmp_path / "run"
    only = ["--only", "grouped_mm,flop_matched"]
    argv = ["run", "--model", path, "--tokens", "4", *only, "--inline", "--no-report", "--out", str(out)]
    assert main([*argv, "--no-progress"]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {r["impl"] for r in rows} == {"eager", "grouped_mm", "flop_matched"}
    assert all(r["status"] == "ok" for r in rows)
    capsys.readouterr()
    for bad, message in [
        (["run", "--model", "no_such_model_type"], "--model no_such_model_type"),
        (["run", "cpu", "--tokens", "4"], "go with --model"),
        (["run", "--model", path, "--only", "warp_speed"], "'warp_speed' is no experts implementation"),
        (["run", "--model", path, "--tokens", "four"], "--tokens: expected comma-separated int"),
    ]:
        assert main(bad) == 2, bad
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err


def test_a_models_dimensions_are_its_blocks_own_read_on_the_meta_device():
    point = spec.model_suite("deepseek_v3", [1], ["bfloat16"], ["forward"], ["eager"]).points[0]
    assert (point.d_model, point.d_ff, point.num_experts, point.top_k) == (7168, 2048, 256, 8)


def test_batched_mm_that_cannot_fit_a_models_block_is_skipped_with_its_prediction(tmp_path_factory, monkeypatch):
    from suites import shape_cache

    path = _config_file(tmp_path_factory, "mixtral")
    suite = spec.model_suite(path, [64], ["float32"], ["forward"], ["eager", "batched_mm", "grouped_mm"])
    monkeypatch.setattr(shape_cache, "available_bytes", lambda device: 200_000)
    runner = point_runner.PointRunner(WorkerSpec("cpu", 1, suite.seed, QUICK, peaks=PEAKS))
    rows = {r["impl"]: r for r in runner.run(suite.points[0], list(suite.model_impls))}
    assert rows["batched_mm"]["status"] == "skipped" and rows["batched_mm"]["predicted_mem_bytes"] > 160_000
    assert "predicted" in rows["batched_mm"]["error"]
    assert rows["eager"]["status"] == rows["grouped_mm"]["status"] == "ok"


def test_only_picks_a_models_baselines_as_it_picks_its_implementations(tmp_path_factory):
    import argparse

    from suites import run_selection

    path = _config_file(tmp_path_factory, "mixtral")
    args = argparse.Namespace(
        model=path, suite=None, tokens="4", dtype=None, mode=None, only="grouped_mm, flop_matched", impl=[]
    )
    suite = run_selection.model_suite(args, torch.device("cpu"))
    assert suite.model_impls == ("eager", "grouped_mm")
    assert run_selection.selection(args, suite) == ([], ["flop_matched"])
