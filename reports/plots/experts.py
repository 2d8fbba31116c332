"""Tokens per expert at one token count, one panel per routing: what the load-balance numbers look like.

The token count is the one with the most routings (else the largest of the sweep), so the panels contrast a
balanced router with the synthetic skews at the same size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reports.cells import fmt_value
from reports.facets import Group
from reports.plots.skew import pick_tokens, routings_by_skew
from reports.plots.style import HATCH, PlotFile, legend, new_figure, save, tex, title_lines

MAX_PANELS = 4


def plot(group: Group, meta: dict, out_dir: Path) -> PlotFile | str:
    moe = group.df[(group.df["family"] == "moe") & group.df["tokens_per_expert"].map(bool)]
    if not len(moe):
        return "no tokens_per_expert recorded"
    tokens = pick_tokens(group) or float(moe["tokens"].max())
    at = moe[moe["tokens"] == tokens]
    if not len(at):
        tokens = float(moe["tokens"].max())
        at = moe[moe["tokens"] == tokens]
    # Prefer an ok row per routing; the routing of the timed input is the same for every implementation.
    at = at.assign(_bad=(at["status"] != "ok").astype(int)).sort_values("_bad", kind="stable")
    firsts = at.drop_duplicates("routing")
    routings = routings_by_skew(firsts.assign(routing=firsts["routing"].fillna("-")))[1][:MAX_PANELS]
    fig, axes = new_figure(ncols=len(routings), width=4.0 if len(routings) > 1 else 6.4, sharey=True)
    disturbed = False
    for ax, routing in zip(axes[0], routings):
        row = firsts[firsts["routing"].fillna("-") == routing].iloc[0]
        counts = np.asarray(row["tokens_per_expert"], dtype=float)
        mark = bool(row["point_disturbed"])
        ax.bar(np.arange(len(counts)), counts, color="#4c72b0", hatch=HATCH if mark else None)
        disturbed |= mark
        ax.axhline(counts.mean(), color="black", ls="--", lw=0.8, label="mean")
        cv = counts.std() / counts.mean() if counts.mean() > 0 else float("nan")
        ax.set_title(
            f"{tex(routing)}\nCV {cv:.2f} · max/mean {counts.max() / max(counts.mean(), 1e-12):.2f}", fontsize=9
        )
        ax.set_xlabel("expert index")
        ax.grid(True, axis="y", alpha=0.3)
    axes[0, 0].set_ylabel("assignments (tokens routed to the expert)")
    legend(axes[0, 0], "hatch" if disturbed else None, fontsize=8)
    fig.suptitle(f"Tokens per expert at T = {fmt_value(tokens)}\n{title_lines(tex(group.label))}", fontsize=10)
    caption = "Assignments each expert computed for the timed input (top_k per token), with the mean as reference."
    if disturbed:
        caption += " Hatched: a point timed on a disturbed machine (its counts hold; its timings are no finding)."
    return save(fig, out_dir / f"{group.slug}_experts.png", "Tokens per expert", caption)
