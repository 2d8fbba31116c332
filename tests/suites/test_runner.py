"""End-to-end runs of a tiny suite on CPU: rows, checks, failures, resume."""

import json
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

import moe_impls
from suites import spec
from suites.cli import main
from suites.environment import run_meta
from suites.reference import error_and_tolerance, tolerance_for
from suites.runner import Runner, resolve_device
from suites.schema import RESULT_COLUMNS, SCHEMA_VERSION


def test_tiny_run_writes_one_complete_row_per_impl_and_point(tiny_suite, tmp_path):
    assert main(["run", str(tiny_suite), "--out", str(tmp_path), "--no-report", "--no-progress"]) == 0
    df = pd.read_json(tmp_path / "results.jsonl", lines=True)
    suite = spec.load(str(tiny_suite))
    assert len(df) == len(suite.points) * 6
    assert set(df["status"]) == {"ok"}
    assert not (set(df.columns) - set(RESULT_COLUMNS) - {"timer_note", "reference", "shape", "normalize_topk"})
    missing = set(RESULT_COLUMNS) - set(df.columns)
    assert not missing, missing
    for _, row in df.iterrows():
        assert row["n_samples"] == len(row["samples_ms"]) >= 3
        assert row["latency_ms_min"] <= row["latency_ms_median"] <= max(row["samples_ms"])
        assert row["peak_mem_bytes"] >= row["weight_bytes"] > 0
    moe = df[df["family"] == "moe"]
    assert (moe["max_abs_err"] <= moe["tolerance"]).all()
    assert (moe["tokens_per_expert"].map(sum) == 8 * 2).all()
    # Every implementation and both baselines share one point id per point.
    assert df.groupby("point_id")["impl"].nunique().eq(6).all()
    meta = json.loads((tmp_path / "run.json").read_text())
    assert (
        meta["schema_version"] == SCHEMA_VERSION and meta["finished"] and meta["peaks"]["matmul_tflops"]["float32"] > 0
    )


@pytest.fixture
def planted_wrong():
    return "tests.plugin_example.hostile:off_by_one"  # 1% off: found by name in the worker, as a user's would be


def test_wrong_implementation_is_recorded_and_never_timed(tiny_suite, tmp_path, planted_wrong):
    code = main(["run", str(tiny_suite), "--out", str(tmp_path), "--no-report", "--no-progress"])
    suite = spec.load(str(tiny_suite))
    summary = Runner(suite, torch.device("cpu"), tmp_path / "again", impls=["sort_group", planted_wrong], baselines=[])
    result = summary.run()
    df = pd.read_json(tmp_path / "again" / "results.jsonl", lines=True)
    wrong = df[df["impl"] == planted_wrong]
    assert code == 0 and result.failed
    assert set(wrong["status"]) == {"wrong"}
    assert wrong["samples_ms"].isna().all() and wrong["latency_ms_median"].isna().all()
    assert (wrong["max_abs_err"] > wrong["tolerance"]).all()
    assert set(df[df["impl"] == "sort_group"]["status"]) == {"ok"}


def test_cli_exit_code_is_nonzero_when_a_point_is_wrong(tiny_suite, tmp_path, planted_wrong):
    args = ["run", str(tiny_suite), "--out", str(tmp_path), "--only", f"loop,{planted_wrong}", "--no-report"]
    assert main([*args, "--no-progress"]) == 1


def test_failure_in_one_impl_is_recorded_and_the_sweep_goes_on(tiny_suite, tmp_path):
    suite = spec.load(str(tiny_suite))
    broken_name = "tests.plugin_example.hostile:raises"
    Runner(suite, torch.device("cpu"), tmp_path, impls=[broken_name, "loop"], baselines=[], progress=False).run()
    df = pd.read_json(tmp_path / "results.jsonl", lines=True)
    broken = df[df["impl"] == broken_name]
    assert set(broken["status"]) == {"error"} and broken["error"].str.contains("kernel exploded").all()
    assert not broken["error"].str.contains("\n").any()
    assert set(df[df["impl"] == "loop"]["status"]) == {"ok"}


def test_killed_run_resumes_to_exactly_one_row_per_point(tmp_path):
    suite_file = tmp_path / "slow.toml"
    suite_file.write_text(
        """
impls = ["loop", "sort_group"]
baselines = ["flop_matched"]
[timing]
budget_ms = 150
min_time_ms = 150
retimes = 0
[[shapes]]
d_model = 16
d_ff = 32
num_experts = 4
top_k = 2
tokens = [4, 8, 16, 32]
"""
    )
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "suites", "run", str(suite_file), "--out", str(out), "--no-report", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = out / "results.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and (not results.exists() or len(results.read_text().splitlines()) < 3):
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    before = len(results.read_text().splitlines())
    assert 3 <= before < 12, "the run should have been killed part-way"
    with results.open("a") as f:
        f.write('{"point_id": "torn')  # a row cut off mid-write
    assert main(["run", str(suite_file), "--out", str(out), "--resume", "--no-report", "--no-progress"]) == 0
    df = pd.read_json(results, lines=True)
    assert len(df) == 12
    assert not df.duplicated(["point_id", "impl"]).any()
    assert df.groupby("point_id").size().eq(3).all()


def test_only_filters_rows_and_rejects_unknown(tiny_suite, tmp_path, capsys):
    assert (
        main(["run", str(tiny_suite), "--out", str(tmp_path / "a"), "--only", "loop,flop_matched", "--no-report"]) == 0
    )
    df = pd.read_json(tmp_path / "a" / "results.jsonl", lines=True)
    assert set(df["impl"]) == {"loop", "flop_matched"}
    assert main(["run", str(tiny_suite), "--out", str(tmp_path / "b"), "--only", "nope", "--no-report"]) == 2
    assert "unknown implementation 'nope'" in capsys.readouterr().err


def test_missing_gpu_is_a_one_line_error(tiny_suite, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(["run", str(tiny_suite), "--device", "cuda", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "CUDA is not available" in err and "\n" not in err


def test_list_names_suites_and_impls(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ["smoke", "cpu", "gpu", "decode", "skew", *moe_impls.names()])


def test_one_tolerance_rule_with_the_input_gradient_scaled_to_the_output():
    out, ref = torch.tensor([1.0, -2.0]), torch.tensor([1.0, -2.5])  # output error 0.5; the reference's scale 2.5
    grad, ref_grad = torch.tensor([0.0, 10.0]), torch.tensor([0.0, 8.0])  # gradient error 2 of 8: 0.25 x 2.5
    err, tolerance = error_and_tolerance(out, grad, ref, ref_grad, "float32")
    assert err == pytest.approx(0.625) and tolerance == pytest.approx(2.5e-4) == tolerance_for("float32", 2.5)
    assert error_and_tolerance(out, None, ref, None, "bfloat16") == pytest.approx((0.5, 0.075))
    assert tolerance_for("float16", 0.0) > 0, "an all-zero reference still allows rounding noise"


class _WrongGradient(torch.nn.Module):
    """sort_group's output, with the input gradient doubled: right in forward, wrong in train."""

    def __init__(self, weights) -> None:
        super().__init__()
        self.layer = moe_impls.get("sort_group")(weights)

    def forward(self, x):
        out, _ = self.layer(x)
        return out + (x - x.detach())


def wrong_gradient(cfg, weights) -> torch.nn.Module:
    return _WrongGradient(weights)


def test_benchmark_views_check_against_the_runners_reference_and_tolerance(tiny_suite):
    from suites.benchmarks.points import benchmark_call

    for point in spec.load(str(tiny_suite)).points:
        call, reset = benchmark_call(point, "sort_group")
        call()
        reset()
        with pytest.raises(AssertionError, match="tests.plugin_example:broken_values is wrong: max error"):
            benchmark_call(point, "tests.plugin_example:broken_values")
        if point.mode == "forward":
            benchmark_call(point, f"{__name__}:wrong_gradient")
        else:  # the input gradient is checked too, as the runner checks it
            with pytest.raises(AssertionError, match="wrong_gradient is wrong"):
                benchmark_call(point, f"{__name__}:wrong_gradient")


def test_the_runner_and_the_expert_parallel_launcher_start_run_json_alike(tiny_suite):
    suite = spec.load(str(tiny_suite))
    meta = run_meta(suite, torch.device("cpu"), ["loop"], [], None, peaks={})
    assert meta["impls"] == ["loop"] and meta["baselines"] == [] and meta["timing"]["budget_ms"] == 20
    assert meta["suite_hash"] == suite.file_hash and meta["device"] == "cpu" and meta["device_name"]
    assert meta["finished"] is None and meta["peaks"] == {} and list(meta)[-1] == "peaks"
    assert run_meta(suite, torch.device("cpu"))["impls"] == list(suite.impls)


@pytest.mark.parametrize("requested", [None, "auto", "cuda", "cuda:1"])
def test_a_cuda_device_reaches_the_worker_with_its_index(monkeypatch, tmp_path, tiny_suite, requested):
    """The worker selects its GPU with torch.cuda.set_device, which raises for a bare "cuda" ("Expected a
    torch.device with a specified index"): the default device of a GPU machine crashed every worker at start-up.
    CUDA is faked available (a CPU build cannot reach it); the index check is torch's own, the one set_device makes."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    device = resolve_device(requested)
    assert device.type == "cuda" and torch._utils._get_device_index(device) == (1 if requested == "cuda:1" else 0)
    runner = Runner(
        spec.load(str(tiny_suite)), torch.device("cuda" if requested in (None, "auto") else requested), tmp_path
    )  # as a script builds it
    assert torch._utils._get_device_index(runner.device) == device.index


def test_the_runner_leaves_nvml_and_cuda_to_its_worker(tiny_suite, tmp_path, monkeypatch):
    """run.json's NVML facts come from the worker: NVML finds its GPU through torch.cuda.get_device_properties,
    which would open a CUDA context in the runner (GPU memory the worker's points then lack). The runner's own
    NVML is made to fail; the run's worker, a fresh process, has its own."""
    from suites import environment

    def no_nvml(device):
        raise AssertionError("the runner opened NVML")

    monkeypatch.setattr(environment, "NVML", no_nvml)
    Runner(spec.load(str(tiny_suite)), torch.device("cpu"), tmp_path, ["loop"], [], progress=False).run()
    meta = json.loads((tmp_path / "run.json").read_text())
    assert meta["nvml"] == {"available": False, "reason": meta["nvml"]["reason"]} and meta["nvml"]["reason"]
