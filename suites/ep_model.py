"""After each expert-parallel launch: the cost model refitted to every expert-parallel row, kept in run.json.

Reports read it there under `ep_model` (keys in `suites.schema.EP_MODEL_KEYS`) and never refit; the fit itself
is analysis (`analysis.ep_calibration`), this file only feeds it the rows and stores its answer.
"""

from __future__ import annotations

import json
from pathlib import Path

from analysis.ep_calibration import calibrate
from suites.results import RESULTS, read_run_meta, write_run_meta
from suites.schema import EP_IMPL


def _ok_ep_rows(out: Path) -> list[dict]:
    """The ok expert_parallel rows of OUT/results.jsonl (rank 0 wrote and validated every line)."""
    path = out / RESULTS
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("impl") == EP_IMPL and r.get("status") == "ok"]


def store_model(out: Path, finished: str) -> None:
    """Refit over every expert-parallel row so far; also a hold-out fit on the smallest multi-rank world size."""
    rows = _ok_ep_rows(out)
    try:
        model = calibrate(rows)
    except ValueError as exc:
        model = {"error": str(exc)}
    sizes = model.get("fit_world_sizes", [])
    if len(sizes) >= 2:
        try:
            held = calibrate(rows, fit_world_sizes=sizes[:1])
            model["holdout"] = {k: held[k] for k in ("fit_world_sizes", "link", "comm_error_by_world_size")}
        except ValueError as exc:
            model["holdout"] = {"error": str(exc)}
    meta = read_run_meta(out)
    meta.update(ep_model=model, finished=finished)
    write_run_meta(out, meta)
