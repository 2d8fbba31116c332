"""The expert-parallel report section and the summary `moe-bench run` prints, from a hand-written run directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reports.cells import Number
from reports.document import Image, Para, Table, to_markdown
from reports.ep import ep_blocks
from reports.ep_summary import ep_summary_text

MODEL = {
    "link": {"bandwidth_Bps": 2e9, "latency_s": 1e-4},
    "fit_rmse_s": 1e-5,
    "fit_points": 2,
    "fit_world_sizes": [2],
    "flops_per_s": 5e10,
    "comm_error_by_world_size": {
        "1": {"points": 1, "mean_abs_err_ms": 0.3, "mean_abs_rel_err": None},
        "2": {"points": 1, "mean_abs_err_ms": 0.25, "mean_abs_rel_err": 0.05},
    },
    "points": [
        {
            "world_size": 2,
            "measured_dispatch_ms": 2.0,
            "measured_combine_ms": 3.0,
            "predicted_dispatch_ms": 2.1,
            "predicted_combine_ms": 2.9,
        }
    ],
}


def _row(world_size: int, latency_ms: float, split_ms: dict, tokens_per_s: float) -> dict:
    return {
        "impl": "expert_parallel",
        "status": "ok",
        "error": None,
        "point_id": f"p{world_size}",
        "shape": "t",
        "tokens": 8,
        "dtype": "float32",
        "routing": "softmax_topk",
        "world_size": world_size,
        "latency_ms_median": latency_ms,
        "samples_ms": [latency_ms],
        "split_ms": split_ms,
        "rank_bytes_sent": [2048] * world_size,
        "rank_imbalance": 1.25 if world_size > 1 else 1.0,
        "tokens_per_s": tokens_per_s,
        "timer": "perf_counter",
        "timer_note": "expert_parallel protocol: a barrier, then one forward",
    }


ROWS = [
    _row(1, 1.0, {"routing": 0.1, "dispatch": 0.2, "compute": 0.5, "combine": 0.2}, 8000.0),
    _row(2, 6.0, {"routing": 0.1, "dispatch": 2.0, "compute": 0.9, "combine": 3.0}, 4000.0),
]


def _run(tmp_path: Path, rows: list[dict], model: dict | None) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "run.json").write_text(json.dumps({"schema_version": 1, **({"ep_model": model} if model else {})}))
    return run


def test_section_shows_scaling_with_typed_cells_and_the_model(tmp_path):
    blocks = ep_blocks(_run(tmp_path, ROWS, MODEL), tmp_path / "out")
    scaling = next(b for b in blocks if isinstance(b, Table))
    one, two = scaling.rows
    assert [c.text if isinstance(c, Number) else c for c in two] == [
        "t T=8/rank float32", "2", "6", "0.1", "2", "0.9", "3", "0.18", "2", "1.250", "0.50x"
    ]  # fmt: skip
    assert isinstance(two[1], Number) and isinstance(two[-1], Number)
    assert one[-1].text == "1.00x"
    images = [b for b in blocks if isinstance(b, Image)]
    assert [b.path.name for b in images] == ["ep_split.png", "ep_bytes.png", "ep_model.png"]
    assert all(b.path.is_file() for b in images)
    markdown = to_markdown(blocks, tmp_path / "out")
    assert "bandwidth 2 GB/s per rank" in markdown and "| all fitted | 2 | 1 | 0.25 | 5% |" in markdown


def test_section_says_how_the_rows_were_timed_against_world_size_1(tmp_path):
    unrecorded = {**ROWS[1], "point_id": "p3", "timer_note": None}  # a row written before timer_note was
    paras = [
        b.text for b in ep_blocks(_run(tmp_path, [*ROWS, unrecorded], None), tmp_path / "out") if isinstance(b, Para)
    ]
    timing = next(p for p in paras if p.startswith("Timing: every world size is timed alike"))
    assert "The single-process rows beside the 1-rank rows in the main tables follow" in timing
    recorded = "perf_counter: expert_parallel protocol: a barrier, then one forward."
    assert timing.endswith(f"{recorded} Also perf_counter (no timer_note recorded).")


@pytest.mark.parametrize(
    "model, says", [(None, "holds no calibrated cost model"), ({"error": "too few"}, "could not be calibrated")]
)
def test_section_says_when_the_model_is_missing_or_failed(tmp_path, model, says):
    notes = [b.text for b in ep_blocks(_run(tmp_path, ROWS, model), tmp_path / "out") if isinstance(b, Para) and b.note]
    assert any(says in n for n in notes), notes


def test_no_section_without_expert_parallel_rows(tmp_path):
    assert ep_blocks(_run(tmp_path, [{**ROWS[0], "impl": "sort_group"}], None), tmp_path / "out") == []


def test_summary_text_lists_each_point_and_the_model_error(tmp_path):
    failed = {**ROWS[1], "point_id": "p3", "world_size": 4, "status": "error", "error": "rank 1 died"}
    text = ep_summary_text(_run(tmp_path, [*ROWS, failed], MODEL)).splitlines()
    assert text[0] == "expert parallel: median ms per forward (slowest rank), bytes sent per rank"
    assert text[2].split() == ["t", "8", "1", "1.000", "0.100", "0.200", "0.500", "0.200", "2.0", "1.000"]
    assert text[4].split()[:4] == ["t", "8", "4", "error:"]
    assert text[-1] == "cost model, 2 rank(s): dispatch+combine off by 0.25 ms (5%) on average"
    assert text[-2].endswith("(n/a) on average")


@pytest.mark.parametrize("model, last", [({"error": "too few"}, "cost model: not calibrated: too few"), (None, None)])
def test_summary_text_without_a_calibrated_model(tmp_path, model, last):
    text = ep_summary_text(_run(tmp_path, ROWS, model)).splitlines()
    assert text[-1] == (last or text[3]) and not any(line.startswith("cost model,") for line in text)


def test_model_table_adds_the_holdout_fit(tmp_path):
    holdout = {"fit_world_sizes": [2], "comm_error_by_world_size": {"4": MODEL["comm_error_by_world_size"]["2"]}}
    blocks = ep_blocks(_run(tmp_path, ROWS, {**MODEL, "holdout": holdout}), tmp_path / "out")
    errors = [b for b in blocks if isinstance(b, Table)][-1]
    assert [(r[0], r[1].text) for r in errors.rows] == [
        ("all fitted", "1"),
        ("all fitted", "2"),
        ("fit on [2] only", "4"),
    ]
