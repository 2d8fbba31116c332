"""Speed-up over `loop` and efficiency against the FLOP-matched dense baseline, both vs tokens.

speed-up = loop median / impl median (above 1: faster than looping over experts).
efficiency = flop_matched median / impl median (1.0: sparsity is free; 0.25: four times slower than a dense FFN
that does the same FLOPs, which the roofline predicts at decode sizes where MoE reads more expert weights).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from reports.facets import Group
from reports.plots import style


def ratio_line(group: Group, impl: str, reference: str) -> pd.DataFrame:
    """Per tokens (index), `ratio` = reference median / impl median where both were measured, and `disturbed`:
    whether either point was timed on a disturbed machine."""
    mine = group.line(impl).set_index("tokens")
    ref = group.line(reference).set_index("tokens")
    out = pd.DataFrame(
        {
            "ratio": ref["latency_ms_median"] / mine["latency_ms_median"],
            "disturbed": ref["point_disturbed"].astype(bool) | mine["point_disturbed"].astype(bool),
        }
    )
    return out[out["ratio"].notna()]


def plot(group: Group, meta: dict, out_dir: Path) -> style.PlotFile | str:
    impls = style.order_impls(group.ok["impl"])
    panels = [
        ("loop", "speed-up over loop (x)", "Speed-up over loop", impls),
        ("flop_matched", "efficiency vs flop_matched dense (x)", "Efficiency vs FLOP-matched dense", impls),
    ]
    fig, axes = style.new_figure(ncols=2, width=5.2)
    drawn, disturbed = 0, False
    for ax, (reference, ylabel, title, names) in zip(axes[0], panels):
        marked_here = False
        for impl in names:
            if impl == reference:
                continue
            line = ratio_line(group, impl, reference)
            if not len(line):
                continue
            marked_here |= style.impl_line(ax, impl, impls, style.Points(line.index, line["ratio"], line["disturbed"]))
            drawn += 1
        disturbed |= marked_here
        ax.axhline(1.0, color="black", lw=0.8, ls=":")
        style.tokens_axes(ax, group.ok["tokens"])
        style.plain_log_axis(ax.yaxis)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            style.legend(ax, "marker" if marked_here else None, fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no {reference} reference", transform=ax.transAxes, ha="center", va="center")
    if not drawn:
        return "neither loop nor flop_matched succeeded beside another implementation"
    fig.suptitle(
        style.group_title("Relative speed (ratio of median latencies)", group),
        fontsize=10,
    )
    caption = (
        "Left: loop median / impl median. Right: flop_matched median / impl median; "
        "1.0 means the MoE layer costs no more than a dense FFN with the same FLOPs per token (sparsity is free)."
    )
    caption = style.noted(
        caption, disturbed, "Hollow markers: either side was timed on a disturbed machine (no finding)."
    )
    return style.save(fig, out_dir / f"{group.slug}_speedup.png", "Speed-up and efficiency", caption)
