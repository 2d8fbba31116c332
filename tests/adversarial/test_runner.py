"""Attacks on the runner by the code it measures: each hostile plug-in (tests/plugin_example/hostile.py) must
cost its own rows and nothing else, and the run must say so in its exit code and run.json."""

import json

import pandas as pd
import pytest
import torch

from suites import spec
from suites.cli import main
from suites.runner import Runner

HOSTILE = "tests.plugin_example.hostile"
SUITE = """
impls = ["loop", "sort_group"]
baselines = ["flop_matched"]
[timing]
budget_ms = 30
min_time_ms = 5
warmup_ms = 1
min_reps = 3
timeout_s = {timeout}
retimes = 0
[[shapes]]
name = "t"
d_model = 16
d_ff = 32
num_experts = 4
top_k = 2
tokens = [8]
"""


def run(tmp_path, *impls: str, timeout: float = 60, name: str = "run"):
    suite_file = tmp_path / f"{name}.toml"
    suite_file.write_text(SUITE.format(timeout=timeout))
    suite = spec.load(str(suite_file))
    names = ["loop", *(f"{HOSTILE}:{i}" for i in impls), "sort_group"]
    out = tmp_path / name
    summary = Runner(suite, torch.device("cpu"), out, names, ["flop_matched"], progress=False).run()
    rows = pd.read_json(out / "results.jsonl", lines=True).set_index("impl")
    return summary, rows, json.loads((out / "run.json").read_text())


def innocent_ok(rows: pd.DataFrame) -> bool:
    return all(rows.loc[n, "status"] == "ok" for n in ("loop", "sort_group", "flop_matched"))


@pytest.mark.parametrize(
    ("plugin", "error"),
    [
        ("sys_exit", "SystemExit: 0"),
        ("os_exit", "the worker process ended (exit code 0) during the check of"),
        ("raises", "RuntimeError: kernel exploded"),
    ],
)
def test_exit_in_forward_fails_its_row_and_the_run(tmp_path, plugin, error):
    summary, rows, meta = run(tmp_path, plugin)
    row = rows.loc[f"{HOSTILE}:{plugin}"]
    assert row["status"] == "error" and error in row["error"] and "\n" not in row["error"]
    assert innocent_ok(rows) and summary.complete and summary.failed
    assert meta["complete"] and meta["rows_written"] == meta["rows_planned"] == 4


def test_worker_lost_while_rows_are_timed_together_blames_only_the_culprit(tmp_path):
    summary, rows, _ = run(tmp_path, "os_exit_while_timed")
    culprit = rows.loc[f"{HOSTILE}:os_exit_while_timed"]
    assert (
        culprit["status"] == "error" and "worker process ended (exit code 0) during the timing of" in culprit["error"]
    )
    assert innocent_ok(rows)
    assert rows.loc[["loop", "sort_group", "flop_matched"], "timer_note"].str.contains("timed alone").all()
    assert summary.worker_starts >= 2


def test_a_hung_row_times_out_and_the_sweep_goes_on(tmp_path):
    summary, rows, _ = run(tmp_path, "hangs", timeout=6)
    row = rows.loc[f"{HOSTILE}:hangs"]
    assert row["status"] == "timeout" and "no progress in 6 s during the check of" in row["error"]
    assert innocent_ok(rows) and summary.failed


def test_a_row_that_writes_the_shared_weights_is_the_one_that_fails(tmp_path):
    _, rows, _ = run(tmp_path, "mutate")
    row = rows.loc[f"{HOSTILE}:mutate"]
    assert row["status"] == "error" and "changed the shared experts.down_proj" in row["error"]
    assert innocent_ok(rows), "the weights were restored for the rows after it"


def test_a_row_that_returns_a_cached_answer_after_its_check_is_wrong(tmp_path):
    _, rows, _ = run(tmp_path, "cache")
    row = rows.loc[f"{HOSTILE}:cache"]
    assert row["status"] == "wrong" and "after timing, on a fresh input" in row["error"]
    assert pd.isna(row["latency_ms_median"]) and innocent_ok(rows)


def test_cpu_allocation_failure_is_oom(tmp_path):
    _, rows, _ = run(tmp_path, "huge_alloc")
    assert rows.loc[f"{HOSTILE}:huge_alloc", "status"] == "oom" and innocent_ok(rows)


def test_resumed_run_json_counts_every_row_and_finished_only_when_complete(tmp_path):
    _, _, meta = run(tmp_path)
    assert meta["finished"] and meta["statuses"] == {"ok": 3}
    results = tmp_path / "run" / "results.jsonl"
    lines = results.read_text().splitlines(keepends=True)
    results.write_text("".join(lines[:2]))  # the last row lost, as after a kill
    meta_path = tmp_path / "run" / "run.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "finished": None, "complete": False}))
    args = ["run", str(tmp_path / "run.toml"), "--out", str(tmp_path / "run"), "--resume", "--no-report"]
    assert main([*args, "--no-progress", "--only", "loop,sort_group,flop_matched"]) == 0
    meta = json.loads(meta_path.read_text())
    assert meta["statuses"] == {"ok": 3} and meta["complete"] and meta["finished"]


def test_a_run_where_every_row_fails_ends_with_a_report_of_the_failures(tmp_path):
    suite_file = tmp_path / "nothing.toml"
    suite_file.write_text(
        SUITE.format(timeout=60)
        .replace('impls = ["loop", "sort_group"]', f'impls = ["{HOSTILE}:raises"]')
        .replace('baselines = ["flop_matched"]', "baselines = []")
    )
    out = tmp_path / "out"
    assert main(["run", str(suite_file), "--out", str(out), "--no-progress"]) == 1
    report = (out / "report" / "report.md").read_text()
    assert "kernel exploded" in report
