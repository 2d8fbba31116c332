"""Throughput vs routing skew at one token count: how each implementation pays for imbalanced experts.

Routings are ordered by their measured max/mean tokens per expert, so the x axis reads from balanced to
collapsed whatever the routing names are.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reports.cells import fmt_value
from reports.facets import Group
from reports.load import latency_band
from reports.plots import style


def pick_tokens(group: Group) -> float | None:
    """The token count with the most routings measured (the largest on ties)."""
    moe = group.ok[group.ok["family"] == "moe"]
    if not len(moe):
        return None
    counts = moe.groupby("tokens")["routing"].nunique()
    best = counts.max()
    return float(max(t for t, c in counts.items() if c == best)) if best > 1 else None


def routings_by_skew(rows) -> tuple:
    """(median max/mean per routing, routings from balanced to skewed); unmeasured skew sorts last."""
    skew = rows.groupby("routing")["load_max_over_mean"].median().fillna(np.inf)
    return skew, sorted(skew.index, key=lambda r: (skew[r], r))


def plot(group: Group, meta: dict, out_dir: Path) -> style.PlotFile | str:
    tokens = pick_tokens(group)
    if tokens is None:
        return "only one routing measured"
    rows = group.ok[(group.ok["tokens"] == tokens) & (group.ok["family"] == "moe")]
    skew, routings = routings_by_skew(rows)
    impls = style.order_impls(rows["impl"])
    everything = group.df[(group.df["tokens"] == tokens) & (group.df["family"] == "moe")]
    fig, axes = style.new_figure(width=7.0)
    ax = axes[0, 0]
    width = 0.8 / max(len(impls), 1)
    disturbed = False
    for i, impl in enumerate(impls):
        x, med, err_lo, err_hi, marked = [], [], [], [], []
        for j, routing in enumerate(routings):
            r = rows[(rows["impl"] == impl) & (rows["routing"] == routing)]
            if not len(r):
                bad = everything[(everything["impl"] == impl) & (everything["routing"] == routing)]
                if len(bad):
                    style.mark_missing(ax, j + (i - (len(impls) - 1) / 2) * width, bad["status"].iloc[0])
                continue
            m, p10, p90 = latency_band(r.iloc[0])
            tput = tokens / (m / 1e3)
            x.append(j + (i - (len(impls) - 1) / 2) * width)
            med.append(tput)
            err_lo.append(tput - tokens / (p90 / 1e3))
            err_hi.append(tokens / (p10 / 1e3) - tput)
            marked.append(bool(r["point_disturbed"].iloc[0]))
        bars = ax.bar(
            x, med, width, yerr=[err_lo, err_hi], color=style.colour(impl, impls), label=style.tex(impl), capsize=2
        )
        for bar, mark in zip(bars, marked):
            if mark:
                bar.set_hatch(style.HATCH)
        disturbed |= any(marked)
    labels = [style.tex(f"{r}\nmax/mean {skew[r]:.2f}" if np.isfinite(skew[r]) else r) for r in routings]
    ax.set_xticks(range(len(routings)), labels, fontsize=7, rotation=20, ha="right")
    ax.set_xlabel("routing (ordered by measured max/mean tokens per expert)")
    ax.set_ylabel("throughput (tokens/s)")
    ax.set_title(
        f"Throughput vs routing skew at T = {fmt_value(tokens)}\n{style.title_lines(style.tex(group.label))}",
        fontsize=10,
    )
    ax.grid(True, axis="y", alpha=0.3)
    style.legend(ax, "hatch" if disturbed else None, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    caption = "Median tokens/s per routing, error bars p10-p90 of the raw samples. Dense baselines ignore routing."
    caption = style.noted(caption, disturbed, style.HATCHED_NOTE)
    return style.save(fig, out_dir / f"{group.slug}_skew.png", "Throughput vs routing skew", caption)
