"""The expert-parallel summary `moe-bench run` prints: the time split per point and world size, and how far
the calibrated cost model is off (the full section with plots is reports/ep.py)."""

from __future__ import annotations

import statistics
from pathlib import Path

from reports.ep_rows import ep_model, ep_rows
from suites.schema import STAGES


def ep_summary_text(run_dir: Path) -> str:
    """Median split (ms) of the slowest rank and bytes per rank at each point and world size, then the model's error."""
    return "\n".join([_split_table(ep_rows(run_dir)), *_model_lines(ep_model(run_dir) or {})])


def _split_table(rows: list[dict]) -> str:
    if not rows:
        return "(no expert-parallel rows)"
    head = f"{'shape':14s} {'T/rank':>7s} {'ranks':>5s} {'total':>8s} " + " ".join(f"{s:>8s}" for s in STAGES)
    lines = [
        "expert parallel: median ms per forward (slowest rank), bytes sent per rank",
        f"{head} {'KiB/rank':>9s} {'imbal':>6s}",
    ]
    for r in sorted(rows, key=lambda r: (r["shape"], r["tokens"], r["dtype"], r["world_size"])):
        if r["status"] != "ok":
            lines.append(f"{r['shape']:14s} {r['tokens']:7d} {r['world_size']:5d} {r['status']}: {r['error']}")
            continue
        split = " ".join(f"{r['split_ms'][s]:8.3f}" for s in STAGES)
        kib = statistics.fmean(r["rank_bytes_sent"]) / 1024
        lines.append(
            f"{r['shape']:14s} {r['tokens']:7d} {r['world_size']:5d} {r['latency_ms_median']:8.3f} {split} "
            f"{kib:9.1f} {r['rank_imbalance'] or 0:6.3f}"
        )
    return "\n".join(lines)


def _model_lines(model: dict) -> list[str]:
    if "error" in model:
        return [f"cost model: not calibrated: {model['error']}"]
    lines = []
    for w, e in model.get("comm_error_by_world_size", {}).items():
        rel = f"{e['mean_abs_rel_err']:.0%}" if e["mean_abs_rel_err"] is not None else "n/a"
        lines.append(
            f"cost model, {w} rank(s): dispatch+combine off by {e['mean_abs_err_ms']:.3g} ms ({rel}) on average"
        )
    return lines
