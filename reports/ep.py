"""The expert-parallel section: scaling from 1 to N ranks, bytes per rank, imbalance, and the cost model's error.

Reads only the run directory: `expert_parallel` rows of results.jsonl (columns in `suites.schema.EP_COLUMNS`)
and run.json's `ep_model`, which the runner writes after each launch (the link and FLOP rate fitted to the
measured rows, and each row's predicted dispatch, combine and compute; see `analysis.ep_calibration`). The
report never refits, so it needs nothing from suites but the schema. `ep_blocks` returns the main report's
section.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reports.cells import Cell, number, significant
from reports.document import Block, Heading, Image, Para, Table
from reports.ep_rows import ep_model, ep_rows
from reports.plots.style import new_figure, save, tex
from suites.schema import STAGES

STAGE_COLOURS = {"routing": "#9467bd", "dispatch": "#ff7f0e", "compute": "#2ca02c", "combine": "#d62728"}


def _groups(rows: list[dict]) -> dict[tuple, list[dict]]:
    """(shape, tokens per rank, dtype, routing) -> its ok rows, ascending world size."""
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("status") == "ok":
            out.setdefault((r["shape"], r["tokens"], r["dtype"], r["routing"]), []).append(r)
    return {k: sorted(v, key=lambda r: r["world_size"]) for k, v in sorted(out.items())}


def _label(key: tuple) -> str:
    shape, tokens, dtype, routing = key
    return f"{shape} T={tokens}/rank {dtype}" + ("" if routing == "softmax_topk" else f" {routing}")


def ep_blocks(results_dir: str | Path, out_dir: str | Path) -> list[Block]:
    """The section's blocks (PNGs written under out_dir); [] when the run has no expert-parallel rows."""
    results_dir, out_dir = Path(results_dir), Path(out_dir)
    rows = ep_rows(results_dir)
    if not rows:
        return []
    groups = _groups(rows)
    blocks: list[Block] = [
        Heading("Expert parallelism"),
        Para(
            "Experts sharded over ranks; each rank routes its own tokens (tokens are per rank, so the global batch "
            "grows with the ranks). Times are the slowest rank's medians, since collectives wait for it; the "
            "latency is per forward, a barrier before each."
        ),
        _timing_para(rows),
    ]
    failed = [r for r in rows if r.get("status") != "ok"]
    if failed:
        blocks.append(Para(f"{len(failed)} expert-parallel row(s) did not finish ok: {failed[0]['error']}", note=True))
    if groups:
        blocks.append(_scaling_table(groups))
        blocks.append(_split_plot(groups, out_dir))
        blocks.append(_bytes_plot(groups, out_dir))
    blocks += _model_blocks(ep_model(results_dir), out_dir)
    return blocks


def _timing_para(rows: list[dict]) -> Para:
    """How the rows were timed: alike at every world size, but not as the world-size-1 rows of other
    implementations, which the main tables put beside the 1-rank expert_parallel rows."""
    protocols = sorted({(r.get("timer") or "timer unrecorded", r.get("timer_note")) for r in rows}, key=str)
    said = " Also ".join(
        f"{timer}: {note}." if note else f"{timer} (no timer_note recorded)." for timer, note in protocols
    )
    return Para(
        "Timing: every world size is timed alike, so the scaling compares like with like. The single-process rows "
        "beside the 1-rank rows in the main tables follow the protocol of suites/timing.py instead; how these "
        f"rows differ, as their timer and timer_note record it: {said}"
    )


def _three_places(x: float) -> str:
    return f"{x:.3f}"


def _times(x: float) -> str:
    return f"{x:.2f}x"


def _whole_percent(x: float) -> str:
    return f"{x:.0%}"


def _scaling_table(groups: dict[tuple, list[dict]]) -> Table:
    rows = []
    for key, runs in groups.items():
        base = runs[0]
        for r in runs:
            split = r["split_ms"]
            comm = split["dispatch"] + split["combine"]
            row: list[Cell] = [
                _label(key),
                number(r["world_size"]),
                number(r["latency_ms_median"], significant(3)),
                *(number(split[s], significant(3)) for s in STAGES),
                number(split["compute"] / comm, significant(2)) if comm > 0 else "",
                number(np.mean(r["rank_bytes_sent"]) / 1024, significant(4)),
                number(r["rank_imbalance"], _three_places) if r.get("rank_imbalance") else "",
                # weak scaling: tokens per second against the smallest world size measured
                number(r["tokens_per_s"] / base["tokens_per_s"], _times),
            ]
            rows.append(row)
    headers = ["point", "ranks", "ms", *(f"{s} ms" for s in STAGES), "compute/comm", "KiB sent/rank"]
    headers += ["rows max/mean", f"tokens/s vs {min(r[0]['world_size'] for r in groups.values())} rank(s)"]
    return Table(headers, rows, caption="Scaling: time split, bytes and load per rank by world size")


def _split_plot(groups: dict[tuple, list[dict]], out_dir: Path) -> Image:
    n = len(groups)
    ncols = min(n, 3)
    fig, axes = new_figure(ncols=ncols, nrows=-(-n // ncols), width=4.2, height=3.4)
    flat = axes.ravel()
    for ax, (key, runs) in zip(flat, groups.items()):
        x = np.arange(len(runs))
        bottom = np.zeros(len(runs))
        for stage in STAGES:
            values = np.array([r["split_ms"][stage] for r in runs])
            ax.bar(x, values, bottom=bottom, color=STAGE_COLOURS[stage], label=stage)
            bottom += values
        ax.set_xticks(x, [str(r["world_size"]) for r in runs])
        ax.set_xlabel("ranks")
        ax.set_ylabel("ms per forward (slowest rank)")
        ax.set_title(tex(_label(key)), fontsize=9)
    for ax in flat[n:]:
        ax.set_visible(False)
    flat[0].legend(fontsize=8)
    caption = (
        "Median routing, dispatch all-to-all, expert compute and combine all-to-all of the slowest rank, per "
        "world size (tokens per rank fixed). Dispatch includes the count exchange, the sort and the regroup."
    )
    plot = save(fig, out_dir / "ep_split.png", "Expert parallel: time split by world size", caption)
    return Image(plot.path, plot.title, plot.caption)


def _bytes_plot(groups: dict[tuple, list[dict]], out_dir: Path) -> Image:
    fig, axes = new_figure(ncols=2, width=5.0, height=3.6)
    ax_bytes, ax_imb = axes[0]
    for key, runs in groups.items():
        w = [r["world_size"] for r in runs]
        ax_bytes.plot(w, [np.mean(r["rank_bytes_sent"]) / 1024 for r in runs], marker="o", label=tex(_label(key)))
        ax_imb.plot(w, [r.get("rank_imbalance") or np.nan for r in runs], marker="o", label=tex(_label(key)))
    ax_bytes.set_xlabel("ranks")
    ax_bytes.set_ylabel("KiB sent per rank per forward")
    ax_imb.set_xlabel("ranks")
    ax_imb.set_ylabel("rows computed, max / mean over ranks")
    ax_bytes.legend(fontsize=7)
    caption = (
        "Left: bytes that left each rank in one forward (dispatch + combine + count exchange; the rank's own "
        "share stays local), mean over ranks. Right: the busiest rank's expert rows over the mean; it sets the pace."
    )
    plot = save(fig, out_dir / "ep_bytes.png", "Expert parallel: traffic and load imbalance", caption)
    return Image(plot.path, plot.title, plot.caption)


def _model_blocks(model: dict | None, out_dir: Path) -> list[Block]:
    blocks: list[Block] = [Heading("Expert parallelism: the cost model against the measured points", level=3)]
    if not model:
        return [*blocks, Para("run.json holds no calibrated cost model (needs rows on 2+ ranks).", note=True)]
    if "error" in model:
        return [*blocks, Para(f"The cost model could not be calibrated: {model['error']}", note=True)]
    link = model["link"]
    blocks.append(
        Para(
            f"Fitted to the dispatch and combine of every row on {', '.join(map(str, model['fit_world_sizes']))} "
            f"ranks: latency {link['latency_s'] * 1e3:.3g} ms per all-to-all, bandwidth "
            f"{link['bandwidth_Bps'] / 1e9:.3g} GB/s per rank (fit RMSE {model['fit_rmse_s'] * 1e3:.3g} ms over "
            f"{model['fit_points']} stage times); expert compute at {model['flops_per_s'] / 1e9:.3g} GFLOP/s. "
            "One-rank rows are predicted no communication: their error is the local cost of dispatch and combine."
        )
    )
    blocks.append(_model_error_table(model))
    points = [p for p in model["points"] if p["world_size"] > 1]
    if points:
        blocks.append(_model_plot(points, out_dir))
    return blocks


def _model_error_table(model: dict) -> Table:
    """Mean prediction error per world size, for the full fit and for the hold-out fit when there is one."""
    fits = [("all fitted", model["comm_error_by_world_size"])]
    holdout = model.get("holdout", {})
    if "comm_error_by_world_size" in holdout:
        fits.append((f"fit on {holdout['fit_world_sizes']} only", holdout["comm_error_by_world_size"]))
    rows = []
    for label, errors in fits:
        for w, e in errors.items():
            rel = number(e["mean_abs_rel_err"], _whole_percent) if e["mean_abs_rel_err"] is not None else ""
            rows.append([label, number(int(w)), number(e["points"]), number(e["mean_abs_err_ms"], significant(3)), rel])
    return Table(
        ["calibration", "ranks", "points", "mean |pred - meas| ms", "mean |rel err|"],
        rows,
        caption="Predicted against measured dispatch + combine",
    )


def _model_plot(points: list[dict], out_dir: Path) -> Image:
    fig, axes = new_figure(width=4.8, height=4.0)
    ax = axes[0][0]
    for w in sorted({p["world_size"] for p in points}):
        mine = [p for p in points if p["world_size"] == w]
        meas = [p["measured_dispatch_ms"] + p["measured_combine_ms"] for p in mine]
        pred = [p["predicted_dispatch_ms"] + p["predicted_combine_ms"] for p in mine]
        ax.scatter(meas, pred, label=f"{w} ranks")
    top = max(max(p["measured_dispatch_ms"] + p["measured_combine_ms"] for p in points), 1e-3) * 1.1
    ax.plot([0, top], [0, top], color="#888", linestyle="--", linewidth=1)
    ax.set_xlabel("measured dispatch + combine (ms)")
    ax.set_ylabel("predicted (ms)")
    ax.legend(fontsize=8)
    plot = save(
        fig,
        out_dir / "ep_model.png",
        "Cost model: predicted against measured all-to-all time",
        "Each point is one shape and token count; on the dashed line the model is exact.",
    )
    return Image(plot.path, plot.title, plot.caption)
