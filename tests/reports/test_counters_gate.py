"""`moe-bench compare --metric counters` on result files whose counters come from real count() calls of real layers.

The runs hold the identity columns the runner writes and the four counter columns; nothing is timed. A
"regression" is the plug-in tests/plugin_example/extra_sync.py (sort_group plus one `.item()`) recorded under
the name sort_group, as a change to sort_group itself would be.
"""

from __future__ import annotations

import pandas as pd
import pytest

import moe_impls
from reports.counters_gate import ATEN_OPS_GROWTH, COUNTERS, gate_frames
from reports.load import normalise
from suites.cli import main
from suites.counters import count
from suites.schema import RESULT_COLUMNS
from tests.reports import synth
from tests.suites.test_counters import EXTRA_SYNC, MODES, SHAPES, build, inputs, warm_call

NAMES = ("loop", "padded", "sort_group", "dense_all", *moe_impls.BASELINES)


def prepared(shapes=("swiglu-8x2", "gelu-4x1"), tokens=(16, 64), sort_group: str = "sort_group") -> dict:
    """(shape, tokens, mode, implementation) -> the warm timed call and its setup, of a fresh layer each."""
    calls = {}
    for shape in shapes:
        cfg = SHAPES[shape]
        for t in tokens:
            for mode in MODES:
                for name in NAMES:
                    layer = build(sort_group if name == "sort_group" else name, cfg)
                    calls[shape, t, mode, name] = warm_call(layer, *inputs(cfg, t), mode)
    return calls


def counted_rows(calls: dict) -> list[dict]:
    """One ok row per prepared call, its counters from one count() of it."""
    return [
        _row(shape, SHAPES[shape], t, mode, name, count(*call).columns())
        for (shape, t, mode, name), call in calls.items()
    ]


def _row(shape, cfg, tokens, mode, name, counters) -> dict:
    row = dict.fromkeys(RESULT_COLUMNS)
    row.update(
        point_id=f"{shape}-{tokens}-{mode}",
        impl=name,
        family="dense" if name in moe_impls.BASELINES else "moe",
        tokens=tokens,
        **{c: getattr(cfg, c) for c in ("d_model", "d_ff", "num_experts", "top_k", "activation", "capacity_factor")},
        dtype="float32",
        mode=mode,
        router="softmax_topk",
        routing="softmax_topk",
        device="cpu",
        world_size=1,
        status="ok",
        **counters,
    )
    return row


def write(path, rows, **meta):
    return str(synth.write_run(path, rows, synth.meta(device="cpu", device_name="test CPU", **meta)))


@pytest.fixture(scope="module")
def base_rows() -> list[dict]:
    return counted_rows(prepared())


def test_a_planted_item_fails_the_gate_one_line_per_row_naming_host_syncs(base_rows, tmp_path, capsys):
    planted = counted_rows(prepared(sort_group=EXTRA_SYNC))
    code = main(
        ["compare", write(tmp_path / "base", base_rows), write(tmp_path / "new", planted), "--metric", "counters"]
    )
    out = capsys.readouterr().out
    failing = [line for line in out.splitlines() if line.startswith("- FAIL")]
    assert code == 1 and "**FAIL**" in out
    assert len(failing) == sum(r["impl"] == "sort_group" for r in planted)
    base_syncs = {r["point_id"]: r["host_syncs"] for r in base_rows if r["impl"] == "sort_group"}
    for line in failing:
        assert "| sort_group: host_syncs " in line and "(1 new host sync)" in line
        assert any(f"host_syncs {n} -> {n + 1} " in line for n in base_syncs.values())
        assert "aten_ops" not in line and "counted_flops" not in line and "alloc_bytes" not in line


def test_the_unchanged_build_counted_20_times_passes_20_times(tmp_path, capsys):
    small = {"shapes": ("swiglu-8x2",), "tokens": (32,)}
    base = write(tmp_path / "base", counted_rows(prepared(**small)))
    calls = prepared(**small)  # other layer objects than the base's, counted again and again
    passed = 0
    for trial in range(20):
        new = write(tmp_path / f"new{trial}", counted_rows(calls))
        passed += main(["compare", base, new, "--metric", "counters"]) == 0
        out = capsys.readouterr().out
        assert "- FAIL" not in out and "- changed" not in out
    assert passed == 20


def frame(rows) -> pd.DataFrame:
    return normalise(pd.DataFrame(rows))


def edited(rows, counter: str, change, impl: str = "padded") -> list[dict]:
    """A copy of `rows` where `counter` of every `impl` row becomes change(value)."""
    return [{**r, counter: change(r[counter])} if r["impl"] == impl else r for r in rows]


@pytest.mark.parametrize(
    ("counter", "change", "fails"),
    [
        ("host_syncs", lambda v: v + 1, True),
        ("host_syncs", lambda v: v - 1, False),  # padded reads its largest load once: fewer syncs pass
        ("aten_ops", lambda v: int(v * (1 + ATEN_OPS_GROWTH)), False),
        ("aten_ops", lambda v: int(v * (1 + ATEN_OPS_GROWTH)) + 1, True),
        ("aten_ops", lambda v: v - 5, False),
        ("launch_ops", lambda v: int(v * (1 + ATEN_OPS_GROWTH)) + 1, True),
        ("launch_ops", lambda v: v - 1, False),
        ("counted_flops", lambda v: v + 1, True),
        ("counted_flops", lambda v: v - 1, True),
        ("alloc_bytes", lambda v: v + 4, True),
        ("alloc_bytes", lambda v: v - 4, True),
    ],
)
def test_each_rule(base_rows, counter, change, fails):
    gate = gate_frames(frame(base_rows), frame(edited(base_rows, counter, change)))
    padded = [r for r in gate.rows if r.impl == "padded"]
    assert len(padded) == sum(r["impl"] == "padded" for r in base_rows)
    assert all(len(r.changes) == 1 and r.changes[0].counter == counter for r in padded)
    assert all(bool(r.failures) == fails for r in padded)
    assert {r.impl for r in gate.rows if r.changes} == {"padded"}
    assert gate.exit_code == int(fails)
    if not fails:
        assert "- changed" in gate.markdown() and "**PASS**" in gate.markdown()


def test_a_base_counted_before_launch_ops_is_compared_on_the_other_counters(base_rows):
    older = [{k: v for k, v in r.items() if k != "launch_ops"} for r in base_rows]
    grown = edited(base_rows, "launch_ops", lambda v: 2 * v)
    assert gate_frames(frame(older), frame(grown)).exit_code == 0
    assert gate_frames(frame(older), frame(edited(grown, "alloc_bytes", lambda v: v + 4))).exit_code == 1


def test_a_row_that_newly_fails_fails_the_gate(base_rows):
    new = [dict(r) for r in base_rows]
    victim = next(r for r in new if r["impl"] == "loop")
    victim.update(dict.fromkeys(COUNTERS), status="error", error="RuntimeError: boom")
    gate = gate_frames(frame(base_rows), frame(new))
    assert gate.exit_code == 1 and "status ok -> error (RuntimeError: boom)" in gate.markdown()


def test_rows_without_counters_are_noted_and_runs_without_any_exit_2(base_rows, tmp_path, capsys):
    partial = [dict(r, **dict.fromkeys(COUNTERS)) if r["impl"] == "dense_all" else r for r in base_rows]
    gate = gate_frames(frame(base_rows), frame(partial))
    note = [line for line in gate.markdown().splitlines() if "no counters" in line]
    n_dense_all = sum(r["impl"] == "dense_all" for r in base_rows)
    assert gate.exit_code == 0 and len(note) == 1 and f"0 rows in BASE and {n_dense_all} in NEW" in note[0]

    bare = [dict(r, **dict.fromkeys(COUNTERS)) for r in base_rows]
    for base, new in ((bare, bare), (bare, base_rows)):
        code = main(["compare", write(tmp_path / "b", base), write(tmp_path / "n", new), "--metric", "counters"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and "found none in BASE" in err


def test_runs_on_different_devices_are_noted(base_rows, tmp_path, capsys):
    base = write(tmp_path / "base", base_rows)
    new = str(synth.write_run(tmp_path / "new", base_rows, synth.meta(device="cuda")))
    assert main(["compare", base, new, "--metric", "counters"]) == 0
    assert "BASE ran on cpu, NEW on cuda" in capsys.readouterr().out
