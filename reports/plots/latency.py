"""Latency distributions: one box per implementation (raw samples_ms), small multiples over a few token counts.

Boxes are the quartiles, whiskers Tukey's 1.5 IQR rule, dots the outliers beyond them; hatched boxes were timed
on a disturbed machine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reports.cells import fmt_value
from reports.facets import Group
from reports.load import samples_of
from reports.plots import style

MAX_PANELS = 4


def pick_tokens(tokens, limit: int = MAX_PANELS) -> list[float]:
    """Up to `limit` token counts spread evenly over the sorted sweep, always the smallest and the largest."""
    values = sorted(set(tokens))
    if len(values) <= limit:
        return values
    return [values[i] for i in sorted(set(np.linspace(0, len(values) - 1, limit).round().astype(int)))]


def plot(group: Group, meta: dict, out_dir: Path) -> style.PlotFile | str:
    impls = style.order_impls(group.ok["impl"])
    lines = {impl: group.line(impl) for impl in impls}
    tokens = pick_tokens(t for line in lines.values() for t in line["tokens"])
    if not tokens:
        return "no successful points"
    fig, axes = style.new_figure(ncols=len(tokens), width=3.6 if len(tokens) > 1 else 6.4)
    disturbed = False
    for ax, t in zip(axes[0], tokens):
        data, names, marked = [], [], []
        for impl, line in lines.items():
            rows = line[line["tokens"] == t]
            if len(rows):
                data.append(samples_of(rows.iloc[0]))
                names.append(impl)
                marked.append(bool(rows["point_disturbed"].iloc[0]))
        box = ax.boxplot(
            data, patch_artist=True, widths=0.6, flierprops={"markersize": 2}, medianprops={"color": "black"}
        )
        for patch, impl, mark in zip(box["boxes"], names, marked):
            patch.set_facecolor(style.colour(impl, impls))
            patch.set_alpha(0.6)
            if mark:
                patch.set_hatch(style.HATCH)
        disturbed |= any(marked)
        ax.set_xticks(range(1, len(names) + 1), [style.tex(n) for n in names], rotation=45, ha="right", fontsize=8)
        ax.set_title(f"T = {fmt_value(t)}", fontsize=9)
        ax.set_ylabel("latency per call (ms)")
        values = np.concatenate(data) if data else np.array([])
        if len(values) and values.min() > 0 and values.max() / values.min() > 20:
            ax.set_yscale("log")
            style.plain_log_axis(ax.yaxis)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(style.group_title("Latency distribution", group), fontsize=10)
    caption = "Every timed repetition: boxes are quartiles, whiskers 1.5 IQR, dots outliers."
    if disturbed:
        style.legend(axes[0, -1], "hatch", **style.BESIDE)
    caption = style.noted(caption, disturbed, style.HATCHED_NOTE)
    return style.save(fig, out_dir / f"{group.slug}_latency.png", "Latency distribution", caption)
