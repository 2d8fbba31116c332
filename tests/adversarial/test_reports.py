"""Hostile inputs to the report and compare commands: lost rows, someone else's directory, look-alike layers,
runs where nothing was timed, huge runs, bad options, `$` in names, poisoned timings, disturbed machines."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from reports import render, tables
from reports.compare import compare_frames
from reports.facets import split_groups
from reports.load import load_run, normalise
from reports.outdir import MARKER
from reports.render import render_report
from reports.stats import bootstrap_medians, interval, mann_whitney_p, mann_whitney_u
from suites.cli import main
from tests.reports import synth

SMALL = {"tokens": (16, 4096), "skew_tokens": None, "failures": False}
REASON = "cpu pressure: 180 ms stalled > 50 ms"


def frame(rows) -> pd.DataFrame:
    return normalise(pd.DataFrame(rows))


def one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"moe-bench {command}: error:") and "\n" not in err, err
    return err


# 1. rows of BASE missing from NEW


def test_compare_fails_when_new_lost_rows_of_base(tmp_path, capsys):
    base = synth.make_rows(**SMALL)
    new = [r for r in synth.make_rows(noise_seed=3, **SMALL) if r["impl"] != "sort_group"]
    synth.write_run(tmp_path / "base", base)
    synth.write_run(tmp_path / "new", new)
    assert main(["compare", str(tmp_path / "base"), str(tmp_path / "new")]) == 1
    out = capsys.readouterr().out
    lost = sum(r["impl"] == "sort_group" for r in base)
    assert f"{lost} missing from NEW" in out and "**FAIL**" in out
    assert out.count("| sort_group | ok |") == lost  # each lost row is named


def test_rows_only_in_new_are_listed_and_pass(tmp_path, capsys):
    base = [r for r in synth.make_rows(**SMALL) if r["impl"] != "padded"]
    new = synth.make_rows(noise_seed=3, **SMALL)
    synth.write_run(tmp_path / "base", base)
    synth.write_run(tmp_path / "new", new)
    assert main(["compare", str(tmp_path / "base"), str(tmp_path / "new")]) == 0
    out = capsys.readouterr().out
    added = sum(r["impl"] == "padded" for r in new)
    assert f"{added} only in NEW" in out and out.count("| padded | ok |") == added


# 2. the output directory belongs to the user unless the tool made it


def _run(tmp_path, name="run", **kw):
    rows = synth.make_rows(tokens=(16,), skew_tokens=None, impls=("loop", "flop_matched"), failures=False, **kw)
    return synth.write_run(tmp_path / name, rows)


def test_report_refuses_a_directory_holding_someone_elses_files(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    for name in ("g00_holiday.png", "report.md", "results.csv", "notes.txt"):
        (out / name).write_text(f"my {name}")
    assert main(["report", str(_run(tmp_path)), "--out", str(out)]) == 2
    assert "no .moe-bench-report marker" in one_line_error(capsys, "report")
    assert sorted(p.name for p in out.iterdir()) == ["g00_holiday.png", "notes.txt", "report.md", "results.csv"]
    assert all(p.read_text() == f"my {p.name}" for p in out.iterdir())


def test_rerender_deletes_only_the_files_the_last_render_wrote(tmp_path):
    out = tmp_path / "new" / "dir"  # created, parents too, and marked as the tool's
    two_groups = synth.make_rows(tokens=(16,), skew_tokens=None, modes=("forward", "train"), failures=False)
    render_report(synth.write_run(tmp_path / "two", two_groups), out)
    assert (out / "g01_throughput.png").exists()
    assert "g01_throughput.png" in json.loads((out / MARKER).read_text())["files"]
    (out / "g05_mine.png").write_text("keep me")  # a user's file in the tool's directory
    render_report(_run(tmp_path), out)  # one group now: the old g01_* files are stale
    assert not (out / "g01_throughput.png").exists() and (out / "g00_throughput.png").exists()
    assert (out / "g05_mine.png").read_text() == "keep me"


def test_an_empty_directory_and_the_default_one_are_writable(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert render_report(_run(tmp_path), empty).exists() and (empty / MARKER).exists()
    run = _run(tmp_path, "older")
    (run / "report").mkdir()
    (run / "report" / "report.md").write_text("rendered by an older moe-bench, without a marker")
    (run / "report" / "figure.svg").write_text("a user's file")
    assert render_report(run).parent == run / "report"
    assert (run / "report" / "figure.svg").read_text() == "a user's file"


# 3. layers of equal dimensions are different layers


def _twin_rows(change: dict) -> list[dict]:
    """Two layers of equal dimensions that differ only in `change` (the second layer's values)."""
    first = synth.make_rows(**SMALL)
    second = synth.make_rows(noise_seed=4, **SMALL)
    for row in first:
        row.update(shape="layer-a", normalize_topk=True)
    for row in second:
        row.update({"shape": "layer-a", "normalize_topk": True, **change, "point_id": "b-" + row["point_id"]})
    return first + second


@pytest.mark.parametrize("change", [{"normalize_topk": False}, {"shape": "layer-b"}])
def test_layers_differing_in_one_identity_column_are_not_merged(tmp_path, change):
    rows = _twin_rows(change)
    groups = split_groups(frame(rows))
    assert len(groups) == 2 and len({g.label for g in groups}) == 2
    assert [len(g.df) for g in groups] == [len(rows) // 2] * 2
    md = render_report(synth.write_run(tmp_path, rows), tmp_path / "out").with_name("report.md").read_text()
    assert md.count("Fastest MoE implementation per point") == 2


# 4. nothing was timed


def test_a_run_where_every_row_failed_lists_every_failure(tmp_path):
    rows = [
        {"point_id": f"p{i}", "impl": impl, "tokens": 16, "status": status, "error": f"{impl} failed: reason {i}"}
        for i, (impl, status) in enumerate([("loop", "error"), ("padded", "skipped"), ("sort_group", "timeout")])
    ]
    md = render_report(synth.write_run(tmp_path, rows)).with_name("report.md").read_text()
    assert "No point succeeded" in md
    assert all(f"failed: reason {i}" in md for i in range(3))


def test_a_run_whose_every_line_is_ignored_says_there_are_no_rows(tmp_path, capsys):
    run = synth.write_run(tmp_path, [])
    (run / "results.jsonl").write_text('{"hello": 1}\nnull\n[1, 2]\n{"impl": "loop", "latency_ms_median": -1}\n')
    md = render_report(run).with_name("report.md").read_text()
    assert "no rows" in md
    assert len(capsys.readouterr().err.strip().splitlines()) == 4


# 5. scale: the same answers as the obvious loops, and huge runs say what they left out


def _naive_dense_reference(ok: pd.DataFrame, group, impl: str, tokens, routing):
    rows = ok[(ok["group"] == group) & (ok["impl"] == impl) & (ok["tokens"] == tokens)]
    same = rows[rows["routing"].fillna("") == (routing or "")]
    rows = same if len(same) else rows
    return rows.iloc[0] if len(rows) else None


def test_dense_references_equal_a_row_by_row_search():
    rows = synth.make_rows(tokens=(1, 16, 256), skew_tokens=16, **{"failures": True})
    rows += synth.make_rows(tokens=(16,), skew_tokens=None, modes=("train",), failures=False)
    rows = [
        r for r in rows if not (r["impl"] == "flop_matched" and r["routing"] == "softmax_topk" and r["tokens"] == 1)
    ]
    for r in rows[::7]:
        r["routing"] = None  # null routings meet null routings
    df = frame(rows).assign(group=lambda d: d["mode"].map({"forward": 0, "train": 1}))
    moe = df[(df["family"] == "moe") & (df["status"] == "ok")]
    ok = df[df["status"] == "ok"]
    for impl in ("flop_matched", "param_matched"):
        found = tables.dense_references(moe, df, impl)
        for i, r in moe.iterrows():
            naive = _naive_dense_reference(ok, r["group"], impl, r["tokens"], r["routing"])
            expected = np.nan if naive is None else naive["latency_ms_median"]
            assert found.at[i, "latency_ms_median"] == pytest.approx(expected, nan_ok=True)


def test_batched_tests_equal_one_test_at_a_time():
    rng = np.random.default_rng(0)
    xs = [rng.integers(0, 6, size=n).astype(float) for n in (5, 5, 8, 3, 5, 0)]  # ties, mixed sizes, an empty one
    ys = [rng.integers(0, 6, size=n).astype(float) for n in (5, 7, 8, 3, 5, 4)]
    assert mann_whitney_p(xs, ys) == pytest.approx([mann_whitney_u(x, y)[1] for x, y in zip(xs, ys)])
    x = rng.lognormal(size=(4, 9))
    many = bootstrap_medians(x, 200, np.random.default_rng(1))
    positions = np.random.default_rng(1).integers(0, 9, size=(200, 9))  # the same draw, applied row by row
    assert many == pytest.approx(np.stack([np.median(np.sort(row)[positions], axis=1) for row in x]))
    ratios = rng.lognormal(size=(3, 1000))
    assert np.stack(interval(ratios)) == pytest.approx(np.percentile(ratios, [2.5, 97.5], axis=1))


def test_a_large_run_plots_its_first_groups_and_says_how_many_it_left_out(tmp_path, monkeypatch):
    monkeypatch.setattr(render, "MAX_PLOTTED_GROUPS", 1)
    run = synth.write_run(tmp_path / "run", synth.large_rows(6000, n_samples=8))
    report = render_report(run, tmp_path / "out")
    groups = split_groups(load_run(run)[1])
    md = report.with_name("report.md").read_text()
    assert len(groups) > 10
    assert f"Plots are drawn for the first 1 of {len(groups)} groups" in md
    assert {p.name.split("_")[0] for p in (tmp_path / "out").glob("*.png")} == {"g00"}
    assert all(f"## {g.label}\n" in md for g in groups)  # every group keeps its section and tables


# 6. numeric options


@pytest.mark.parametrize(
    ("option", "value"),
    [("--alpha", v) for v in ("-1", "nan", "inf", "0", "1", "lots")]
    + [("--threshold", v) for v in ("-5%", "nan", "inf", "-0.1", "0", "nan%")]
    + [("--seed", v) for v in ("-1", "1.5", "x")],
)
def test_bad_numeric_options_are_one_line_naming_the_option(tmp_path, capsys, option, value):
    run = _run(tmp_path)
    assert main(["compare", str(run), str(run), f"{option}={value}"]) == 2
    assert f"error: {option}: expected" in one_line_error(capsys, "compare")


# 7. `$` in names


def test_dollar_signs_in_names_are_shown_not_parsed(tmp_path):
    rows = synth.make_rows(tokens=(16, 256), skew_tokens=16, failures=False)
    for row in rows:
        row["shape"] = "w$b_{$c"  # mathtext would fail on "b_{"
        if row["impl"] == "padded":
            row["impl"] = "my$x^{$impl"
    md = render_report(synth.write_run(tmp_path, rows), tmp_path / "out").with_name("report.md").read_text()
    assert "w$b_{$c" in md and "my$x^{$impl" in md  # the text itself is never altered
    assert len(list((tmp_path / "out").glob("g00_*.png"))) >= 6


# 8. poisoned timings and lines that are not rows


def test_rows_with_impossible_timings_or_no_row_at_all_are_left_out(tmp_path, capsys):
    rows = synth.make_rows(tokens=(16,), skew_tokens=None, impls=("loop", "padded", "flop_matched"), failures=False)
    run = synth.write_run(tmp_path, rows)
    fast = dict(rows[1], latency_ms_median=-0.2)  # would win every table
    bad = [
        json.dumps(fast),
        json.dumps(dict(rows[0], latency_ms_median=0.0)),  # would divide by zero
        json.dumps(dict(rows[0], samples_ms=[1.0, math.nan, 2.0], latency_ms_median=None)),
        json.dumps(dict(rows[0], samples_ms=[1.0, math.inf], latency_ms_median=None)),
        json.dumps(dict(rows[0], latency_ms_p90="fast")),
        '{"hello": 1}',
        "null",
        "[1, 2, 3]",
        '{"point_id": "torn", "impl": "lo',
    ]
    with (run / "results.jsonl").open("a") as fh:
        fh.write("\n".join(bad))
    _, df = load_run(run)
    assert len(df) == len(rows) and (df["latency_ms_median"] > 0).all()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == len(bad) and all(f"line {len(rows) + i + 1}:" in line for i, line in enumerate(err))
    assert "results.jsonl line 4: latency_ms_median = -0.2: not a positive finite number; row ignored" in err[0]
    assert "samples_ms[1] = NaN" in err[2] and "latency_ms_p90 = 'fast'" in err[4] and "not JSON" in err[-1]
    md = render_report(run, tmp_path / "out").with_name("report.md").read_text()
    assert "-200 µs" not in md and "| 16 | softmax_topk | loop |" in md


# 9. disturbed machines and the cache state


def _disturb(rows: list[dict], tokens: int, impls=None) -> None:
    """Mark the point at `tokens` disturbed (the rows of `impls` only, else all) and every other row steady."""
    for row in rows:
        hit = row["tokens"] == tokens and (impls is None or row["impl"] in impls)
        row.update(disturbed=hit, disturbance=[REASON] if hit else None, cache="cold")


def test_the_report_names_disturbed_points_and_draws_no_verdict_from_them(tmp_path):
    rows = synth.make_rows(tokens=(16, 256, 4096), skew_tokens=None, impls=(*synth.IMPLS, "hf_eager"), failures=False)
    _disturb(rows, 256, impls=("loop",))  # one row disturbs its whole point
    run = synth.write_run(tmp_path, rows, synth.meta(timing={"cache": "cold"}))
    md = render_report(run, tmp_path / "out").with_name("report.md").read_text()
    body = md.split("\n", 2)[2]
    assert body.startswith("> Disturbed machine: 1 of 3 points")
    assert f"| 256 | softmax_topk | loop | {REASON} |" in md
    winners = [line for line in md.splitlines() if line.startswith("| 256 | softmax_topk |")]
    assert winners and all("disturbed" in line for line in winners)  # every table marks the point
    assert "| 256 | softmax_topk | disturbed, no verdict | - |" in md
    versus_dense = [line for line in winners if "(disturbed)" in line]
    assert len(versus_dense) >= 5 and all(line.count("disturbed, no verdict") == 2 for line in versus_dense[1:])
    assert md.count("| 16 | softmax_topk | disturbed") == 0
    assert "cold: weights and inputs out of cache at every call" in md
    assert "Hollow markers: points timed on a disturbed machine" in md and "Hatched: timed on a disturbed" in md


def test_older_results_without_the_new_columns_render_as_before(tmp_path):
    md = render_report(_run(tmp_path), tmp_path / "out").with_name("report.md").read_text()
    assert "Disturbed machine" not in md and "| cache | not recorded in this run |" in md


def test_compare_calls_a_disturbed_point_ambiguous_with_the_reason(tmp_path, capsys):
    base = synth.make_rows(**SMALL)
    new = synth.scaled(synth.make_rows(noise_seed=3, **SMALL), 1.5)  # every point 50% slower ...
    _disturb(new, 4096)  # ... but those at 4096 tokens were timed on a disturbed machine
    synth.write_run(tmp_path / "base", base)
    synth.write_run(tmp_path / "new", new)
    args = ["compare", str(tmp_path / "base"), str(tmp_path / "new")]
    result = compare_frames(frame(base), frame(new))
    at_4096 = [p for p in result.points if "T=4096" in p.point]
    assert at_4096 and all(p.verdict == "ambiguous" and p.note == f"disturbed in NEW: {REASON}" for p in at_4096)
    assert all(p.verdict == "slower" for p in result.points if p not in at_4096)

    steady_base = [r for r in synth.make_rows(**SMALL) if r["tokens"] == 4096]
    _disturb(steady_base, 4096)
    synth.write_run(tmp_path / "b2", steady_base)
    synth.write_run(tmp_path / "n2", [r for r in new if r["tokens"] == 4096])
    assert main(["compare", str(tmp_path / "b2"), str(tmp_path / "n2")]) == 0
    out = capsys.readouterr().out
    assert f"disturbed in BASE: {REASON} / disturbed in NEW: {REASON}" in out and "**slower**" not in out
    assert main(["compare", str(tmp_path / "b2"), str(tmp_path / "n2"), "--strict"]) == 1
    assert main(args) == 1  # the undisturbed points are still judged


def test_strict_is_documented(capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    assert "--strict" in capsys.readouterr().out


def test_the_cache_header_says_how_many_rows_were_made_cold_by_eviction_reads():
    from reports.render import cache_state

    df = pd.DataFrame(
        {"status": ["ok"] * 3, "cache": ["cold"] * 3, "cache_read_mb": [12.25, 3.5, 0.0], "cache_note": [None] * 3}
    )
    text = cache_state({"timing": {"cache": "cold"}}, df)
    assert "2 rows with too few copies to span the LLC read up to 12.2 MiB" in text
    assert "eviction" not in cache_state({}, df.assign(cache_read_mb=0.0))
