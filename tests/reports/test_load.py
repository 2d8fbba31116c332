import json
import warnings

import pandas as pd
import pytest

from reports.load import RunLoadError, load_run
from suites.schema import RESULT_COLUMNS, SCHEMA_VERSION
from tests.reports import synth


def test_loads_every_schema_column_and_statuses(synthetic_run):
    meta, df = load_run(synthetic_run)
    assert meta["schema_version"] == SCHEMA_VERSION
    assert set(RESULT_COLUMNS) <= set(df.columns)
    assert set(df["status"]) == {"ok", "wrong", "oom", "error", "skipped"}
    ok = df[df["status"] == "ok"]
    assert ok["samples_ms"].map(len).eq(40).all()


def test_incompatible_schema_version_is_one_line(tmp_path):
    synth.write_run(tmp_path, synth.make_rows(tokens=(16,), skew_tokens=None), synth.meta(schema_version=99))
    with pytest.raises(RunLoadError, match="schema_version 99 is incompatible") as err:
        load_run(tmp_path)
    assert "\n" not in str(err.value)


def test_missing_files_and_bad_lines(tmp_path, capsys):
    with pytest.raises(RunLoadError, match="no such directory"):
        load_run(tmp_path / "nope")
    (tmp_path / "run.json").write_text(json.dumps(synth.meta()))
    with pytest.raises(RunLoadError, match="results.jsonl: file missing"):
        load_run(tmp_path)
    (tmp_path / "results.jsonl").write_text('{"impl": "loop"}\nnot json\n')
    _, df = load_run(tmp_path)  # a bad line is left out with a warning, never the whole run
    assert list(df["impl"]) == ["loop"]
    assert "results.jsonl line 2: not JSON" in capsys.readouterr().err


def test_sparse_rows_get_every_column_and_a_summary_from_samples(tmp_path):
    synth.write_run(tmp_path, [{"impl": "loop", "tokens": 8, "samples_ms": [1.0, 2.0, 3.0, 4.0]}, {"impl": "x"}])
    _, df = load_run(tmp_path)
    assert set(RESULT_COLUMNS) <= set(df.columns)
    assert list(df["status"]) == ["ok", "error"]
    assert df.loc[0, "latency_ms_median"] == 2.5
    assert df.loc[0, "tokens_per_s"] == 8 / 2.5e-3
    assert df.loc[0, "family"] == "moe"


def test_a_sparse_run_loads_into_a_frame_the_report_can_extend_without_pandas_fragmentation(tmp_path):
    """Every missing schema column was once inserted one by one: each of the report's later columns then warned
    that the frame was highly fragmented (about 300 PerformanceWarnings over the report tests), and paid for it."""
    synth.write_run(tmp_path, [{"impl": "loop", "tokens": 8, "samples_ms": [1.0, 2.0]}])
    with warnings.catch_warnings():
        warnings.simplefilter("error", pd.errors.PerformanceWarning)
        _, df = load_run(tmp_path)
        df.assign(group=0, rank=1)


def test_a_point_timed_on_a_slowed_start_is_disturbed_once_a_later_window_lowered_the_baseline(tmp_path):
    """The worker judged the first point against the slowed start's own 1.5 ms canary (clean); the second point's
    clean 1.0 ms lowered the baseline. Read back, the first point is disturbed, and says why; no other is."""
    rows = synth.make_rows(tokens=(1, 16, 256), failures=False)
    points = list(dict.fromkeys(r["point_id"] for r in rows))
    canary = {points[0]: (1.5, 1.5), points[1]: (1.0, 1.5)}  # the points after: (1.1, 1.0)
    for row in rows:
        c, b = canary.get(row["point_id"], (1.1, 1.0))
        row.update(canary_ms=c, canary_baseline_ms=b, disturbed=False, disturbance=None)
    run = synth.write_run(tmp_path / "run", rows, synth.meta(timing={"disturb_canary_drift": 0.15}))
    _, df = load_run(run)
    first = df["point_id"].eq(points[0])
    assert df.loc[first, "point_disturbed"].all() and not df.loc[~first, "point_disturbed"].any()
    assert df.loc[first, "disturbance"].map(lambda d: d[-1].startswith("canary: 1.5 ms vs 1 ms")).all()
    _, unjudged = load_run(synth.write_run(tmp_path / "old", rows, synth.meta()))  # a run.json without the limit
    assert not unjudged["point_disturbed"].any()
