"""Peak memory per implementation and baseline, split into weights, activations (and workspace) and the rest.

Shown at the smallest and the largest token count of the sweep: weights dominate at decode sizes, activations
(and padded's padding, dense_all's idle rows) at prefill sizes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from reports.disturbed import PLOT_LEGEND
from reports.facets import Group, fmt_value
from reports.plots.style import (
    HATCH,
    PlotFile,
    disturbed_handle,
    failed_at,
    mark_missing,
    new_figure,
    order_impls,
    save,
    tex,
)

MIB = 2**20


def plot(group: Group, meta: dict, out_dir: Path) -> PlotFile | str:
    ok = group.ok[group.ok["peak_mem_bytes"].notna()]
    impls = order_impls(ok["impl"])
    lines = {impl: group.line(impl) for impl in impls}
    lines = {impl: line[line["peak_mem_bytes"].notna()] for impl, line in lines.items()}
    tokens = sorted({t for line in lines.values() for t in line["tokens"]})
    if not tokens:
        return "no memory was measured"
    panels = [tokens[0]] if len(tokens) == 1 else [tokens[0], tokens[-1]]
    fig, axes = new_figure(ncols=len(panels), width=4.8)
    kinds = set(ok["mem_kind"].dropna())
    disturbed = False
    for ax, t in zip(axes[0], panels):
        names, weights, acts, rest, marked = [], [], [], [], []
        for impl, line in lines.items():
            rows = line[line["tokens"] == t]
            if not len(rows):
                continue
            r = rows.iloc[0]
            peak = r["peak_mem_bytes"]
            w = r["weight_bytes"] if pd.notna(r["weight_bytes"]) else 0.0
            a = r["activation_bytes"] if pd.notna(r["activation_bytes"]) else max(peak - w, 0.0)
            names.append(impl)
            weights.append(w / MIB)
            acts.append(max(a, 0.0) / MIB)
            rest.append(max(peak - w - max(a, 0.0), 0.0) / MIB)
            marked.append(bool(r["point_disturbed"]))
        failed = failed_at(group, t, exclude=names)
        predicted = {}  # skipped rows whose footprint was predicted: drawn hatched, at the predicted size
        for impl, status in failed.items():
            guess = _predicted(group, impl, t) if status == "skipped" else None
            if guess is not None:
                predicted[len(names)] = guess / MIB
            mark_missing(ax, len(names), status)
            names.append(impl)
            weights.append(0.0)
            acts.append(0.0)
            rest.append(0.0)
        x = np.arange(len(names))
        ax.bar(x, weights, color="#4c72b0", label="weights")
        ax.bar(x, acts, bottom=weights, color="#dd8452", label="activations + workspace")
        ax.bar(x, rest, bottom=np.add(weights, acts), color="#c7c7c7", label="input + other")
        if any(marked):
            top = np.add(np.add(weights, acts), rest)[: len(marked)][marked]
            ax.bar(x[: len(marked)][marked], top, fill=False, hatch=HATCH, edgecolor="#444444", linewidth=0)
            disturbed = True
        if predicted:
            ax.bar(
                list(predicted),
                list(predicted.values()),
                fill=False,
                hatch="//",
                edgecolor="#b00020",
                label="predicted, not run (skipped)",
            )
        ax.set_xticks(x, [tex(n) for n in names], rotation=45, ha="right", fontsize=8)
        ax.set_ylabel("peak memory (MiB)")
        ax.set_title(f"T = {fmt_value(t)}", fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if disturbed:
        handles, labels = [*handles, disturbed_handle("hatch")], [*labels, PLOT_LEGEND]
    fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=8)
    how = ", ".join(sorted(kinds)) or "unknown"
    fig.suptitle(f"Peak memory per call ({how})\n{tex(group.label)}", fontsize=10)
    caption = (
        "Stacked: parameter bytes (all experts resident), activations and workspace, and the rest of the peak "
        "(the input). MoE pays for every expert in weights; dense_all and padded also in activations. "
        "Hatched: a footprint the runner predicted and did not run, because it could not fit."
    )
    if disturbed:
        caption += " Cross-hatched: measured at a point timed on a disturbed machine."
    return save(fig, out_dir / f"{group.slug}_memory.png", "Peak memory", caption)


def _predicted(group: Group, impl: str, tokens: float) -> float | None:
    """Bytes the runner predicted for a row it skipped (e.g. transformers' batched_mm weight gathers)."""
    if "predicted_mem_bytes" not in group.df:
        return None
    rows = group.df[(group.df["impl"] == impl) & (group.df["tokens"] == tokens)]["predicted_mem_bytes"].dropna()
    return float(rows.iloc[0]) if len(rows) else None
