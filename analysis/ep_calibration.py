"""The expert-parallel cost model (`analysis.ep_costs`) calibrated by measured rows, and its error on each row.

Pure arithmetic over result rows (dicts with the columns of `suites.schema.EP_COLUMNS`); the instrument calls
`calibrate` after each launch and stores the answer in run.json under `ep_model`, which reports read.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from analysis.ep_costs import Cluster, ExpertShape, LinkFit, ep_cost, fit_link


@dataclass(frozen=True)
class FittedModel:
    """The calibrated link and expert rate: what predicting one row needs."""

    fit: LinkFit
    flops_per_s: float | None


def shape_of(row: dict) -> ExpertShape:
    """The row's layer shape, its dtype as bytes per element."""
    dtype_bytes = torch.finfo(getattr(torch, row["dtype"])).bits // 8
    return ExpertShape(row["num_experts"], row["top_k"], row["d_model"], row["d_ff"], dtype_bytes, row["activation"])


def calibrate(rows: Sequence[dict], fit_world_sizes: Sequence[int] | None = None) -> dict:
    """Fit the cost model to measured ok expert-parallel rows (the caller selects them) and predict every row.

    ValueError (one line) when the rows do not determine a link: fewer than two distinct byte counts, or
    times that do not grow with bytes (noise at tiny sizes).

    The link (alpha, bandwidth) is one least-squares fit over the dispatch and the combine of every row at
    a fitted world size (all with 2+ ranks by default): x = mean bytes that left a rank, y = the slowest rank's
    median stage time. The expert rate (FLOP/s) is a through-origin fit of the slowest rank's compute time to
    the FLOPs of the rows it computed, over all rows. Each row is then predicted with `ep_cost` on one node
    (ranks_per_node = world size, so only the fitted link is used); 1-rank rows are predicted no communication,
    and what they measure in dispatch and combine (sorting, the self copy) shows as the absolute error.
    """
    fitted_rows = [
        r for r in rows if r["world_size"] >= 2 and (fit_world_sizes is None or r["world_size"] in fit_world_sizes)
    ]
    model = FittedModel(_fit_link(fitted_rows), _expert_rate(rows))
    predictions, by_world = [], {}
    for r in rows:
        point, comm_ms = _prediction(r, model)
        predictions.append(point)
        by_world.setdefault(r["world_size"], []).append(comm_ms)
    return {
        "link": {"bandwidth_Bps": model.fit.link.bandwidth_Bps, "latency_s": model.fit.link.latency_s},
        "fit_rmse_s": model.fit.rmse_s,
        "fit_points": model.fit.num_points,
        "fit_world_sizes": sorted({r["world_size"] for r in fitted_rows}),
        "flops_per_s": model.flops_per_s,
        "comm_error_by_world_size": {str(w): _errors(pairs) for w, pairs in sorted(by_world.items())},
        "points": predictions,
    }


def _fit_link(rows: Sequence[dict]) -> LinkFit:
    """alpha-beta over (mean bytes that left a rank, slowest rank's median seconds) of each dispatch and combine."""
    points = []
    for r in rows:
        points.append((statistics.fmean(r["rank_dispatch_bytes"]), r["split_ms"]["dispatch"] / 1e3))
        points.append((statistics.fmean(r["rank_combine_bytes"]), r["split_ms"]["combine"] / 1e3))
    return fit_link(points)


def _expert_rate(rows: Sequence[dict]) -> float | None:
    """FLOP/s through the origin: the FLOPs of the rows the slowest rank computed against its compute seconds."""
    num = den = 0.0
    for r in rows:
        work = max(r["rank_rows_computed"]) * shape_of(r).flops_per_token / r["top_k"]
        num, den = num + work * work, den + work * r["split_ms"]["compute"] / 1e3
    return num / den if den > 0 else None


def _prediction(row: dict, model: FittedModel) -> tuple[dict, tuple[float, float]]:
    """The row's measured and predicted stage times (ms), as run.json's ep_model["points"] lists them, and its
    (predicted, measured) dispatch + combine ms."""
    cluster = Cluster(ranks_per_node=row["world_size"], intra=model.fit.link, inter=model.fit.link)
    cost = ep_cost(shape_of(row), row["tokens"], row["world_size"], cluster, model.flops_per_s)
    split = row["split_ms"]
    measured_comm = split["dispatch"] + split["combine"]
    point = {
        "point_id": row["point_id"],
        "shape": row["shape"],
        "tokens": row["tokens"],
        "dtype": row["dtype"],
        "world_size": row["world_size"],
        "bytes_per_rank": statistics.fmean(row["rank_dispatch_bytes"]),
        "measured_dispatch_ms": split["dispatch"],
        "measured_combine_ms": split["combine"],
        "measured_compute_ms": split["compute"],
        "predicted_dispatch_ms": cost.dispatch_s * 1e3,
        "predicted_combine_ms": cost.combine_s * 1e3,
        "predicted_compute_ms": cost.compute_s * 1e3,
        "measured_compute_to_comm": split["compute"] / measured_comm if measured_comm > 0 else None,
        "predicted_compute_to_comm": cost.compute_to_comm,
    }
    return point, (cost.comm_s * 1e3, measured_comm)


def _errors(pairs: list[tuple[float, float]]) -> dict:
    """Mean absolute error (ms) and mean |relative error| of predicted against measured dispatch + combine."""
    relative = [abs(p - m) / m for p, m in pairs if m > 0]
    return {
        "points": len(pairs),
        "mean_abs_err_ms": statistics.fmean(abs(p - m) for p, m in pairs),
        "mean_abs_rel_err": statistics.fmean(relative) if relative else None,
    }
