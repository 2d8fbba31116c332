"""Throughput vs tokens per call: every implementation, with both dense baselines as dashed reference lines.

Median tokens/s with a p10-p90 band computed from the raw samples (tokens / p90 latency .. tokens / p10 latency).
"""

from __future__ import annotations

from pathlib import Path

from reports.facets import Group
from reports.load import latency_band
from reports.plots import style


def plot(group: Group, meta: dict, out_dir: Path) -> style.PlotFile | str:
    impls = style.order_impls(group.ok["impl"])
    fig, axes = style.new_figure()
    ax = axes[0, 0]
    drawn, disturbed = 0, False
    for impl in impls:
        line = group.line(impl)
        if not len(line):
            continue
        bands = [latency_band(r) for _, r in line.iterrows()]
        tokens = line["tokens"].to_numpy()
        median = tokens / [b[0] / 1e3 for b in bands]
        low = tokens / [b[2] / 1e3 for b in bands]
        high = tokens / [b[1] / 1e3 for b in bands]
        disturbed |= style.impl_line(ax, impl, impls, style.Points(tokens, median, line["point_disturbed"]))
        ax.fill_between(tokens, low, high, color=style.colour(impl, impls), alpha=0.12, linewidth=0)
        drawn += 1
    if not drawn:
        return "no successful points"
    style.tokens_axes(ax, group.ok["tokens"])
    ax.set_ylabel("throughput (tokens/s)")
    ax.set_title(style.group_title("Throughput vs tokens", group), fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    style.legend(ax, "marker" if disturbed else None, **style.BESIDE)
    caption = (
        "Median tokens/s with the p10-p90 band of the raw samples; dashed: dense baselines "
        "(param_matched = all expert parameters, flop_matched = the FLOPs of top_k experts)."
    )
    caption = style.noted(caption, disturbed, style.HOLLOW_NOTE)
    return style.save(fig, out_dir / f"{group.slug}_throughput.png", "Throughput vs tokens", caption)
