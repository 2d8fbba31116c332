"""The expert-parallel part of a run directory: its `expert_parallel` rows and run.json's calibrated cost model."""

from __future__ import annotations

import json
from pathlib import Path

from reports.load import read_rows
from suites.schema import EP_IMPL


def ep_rows(run_dir: Path) -> list[dict]:
    """Every expert_parallel row of run_dir/results.jsonl, in file order; [] without the file.

    The lines `read_rows` leaves out are not reported here: the report's `load_run` reports them.
    """
    path = run_dir / "results.jsonl"
    if not path.is_file():
        return []
    return [r for r in read_rows(path, ignored=[], mentioning=f'"{EP_IMPL}"') if r.get("impl") == EP_IMPL]


def ep_model(run_dir: Path) -> dict | None:
    """run.json's `ep_model` (suites.schema.EP_MODEL_KEYS), or None when there is none (yet)."""
    path = run_dir / "run.json"
    return json.loads(path.read_text()).get("ep_model") if path.is_file() else None
