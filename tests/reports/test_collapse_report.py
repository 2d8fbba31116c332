"""The collapse renderer reads only the experiment's two files and writes non-empty figures and a table."""

from __future__ import annotations

import json

import pytest

from reports.collapse import collapse_table, render_collapse


def _write_run(path, steps=10):
    """Two settings, 4 experts, top-1, 8 tokens: 'none' puts everything on expert 0, 'even' spreads it."""
    rows = []
    for setting, load in (("none", [8, 0, 0, 0]), ("even", [2, 2, 2, 2])):
        cv = 3**0.5 if setting == "none" else 0.0
        for step in range(steps):
            rows.append(
                {
                    "setting": setting,
                    "step": step,
                    "task_loss": 1.0 / (step + 1),
                    "aux_loss": 0.0,
                    "eval_task_loss": 0.5
                    if setting == "none" and step == steps - 1
                    else (0.25 if step == steps - 1 else None),
                    "tokens": 8,
                    "top_k": 1,
                    "tokens_per_expert": load,
                    "load_cv": cv,
                    "load_max_over_mean": 4.0 if setting == "none" else 1.0,
                    "dead_experts": 3 if setting == "none" else 0,
                    "dead_fraction": 0.75 if setting == "none" else 0.0,
                    "importance_cv2": cv**2,
                    "selection_bias": None,
                }
            )
    (path / "collapse.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    meta = {
        "seed": 0,
        "config": {"steps": steps, "num_experts": 4, "top_k": 1, "tokens": 8},
        "implementation": "sort_group",
        "model": {"parameters": 123},
        "task": "synthetic",
        "collapse_trigger": "planted",
        "gamma": 0.001,
        "gamma_why": "test",
        "final_task_loss": "eval at the end",
        "settings": {"none": {"recipe": "no balancing"}, "even": {"recipe": "planted even"}},
        "seconds": {"none": 1.0, "even": 2.0},
    }
    (path / "collapse_meta.json").write_text(json.dumps(meta))


def test_collapse_table_by_hand(tmp_path):
    _write_run(tmp_path)
    summary = collapse_table(tmp_path).set_index("setting")
    assert list(summary.index) == ["none", "even"]
    assert summary.loc["none", "load_cv"] == pytest.approx(3**0.5)
    assert summary.loc["none", "dead_experts"] == 3
    assert summary.loc["even", "dead_experts"] == 0
    assert summary.loc["none", "task_loss"] == 0.5 and summary.loc["even", "task_loss"] == 0.25
    assert summary.loc["even", "seconds"] == 2.0


def test_renderer_writes_non_empty_pngs_and_a_table(tmp_path):
    _write_run(tmp_path)
    paths = render_collapse(tmp_path, tmp_path / "out")
    pngs = [p for p in paths if p.suffix == ".png"]
    assert len(pngs) == 3
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    md = (tmp_path / "out" / "collapse.md").read_text()
    assert "| none | no balancing | 1.732 | 4.00 | 3/4 |" in md


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="collapse.jsonl"):
        render_collapse(tmp_path, tmp_path)
