"""Throughput vs tokens per call: every implementation, with both dense baselines as dashed reference lines.

Median tokens/s with a p10-p90 band computed from the raw samples (tokens / p90 latency .. tokens / p10 latency).
"""

from __future__ import annotations

from pathlib import Path

from reports.facets import Group
from reports.load import latency_band
from reports.plots.style import PlotFile, colour, impl_line, legend, new_figure, order_impls, plain_log_axis, save, tex


def plot(group: Group, meta: dict, out_dir: Path) -> PlotFile | str:
    impls = order_impls(group.ok["impl"])
    fig, axes = new_figure()
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
        disturbed |= impl_line(ax, impl, impls, tokens, median, line["point_disturbed"])
        ax.fill_between(tokens, low, high, color=colour(impl, impls), alpha=0.12, linewidth=0)
        drawn += 1
    if not drawn:
        return "no successful points"
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    plain_log_axis(ax.xaxis, group.ok["tokens"])
    ax.set_xlabel("tokens per call")
    ax.set_ylabel("throughput (tokens/s)")
    ax.set_title(f"Throughput vs tokens\n{tex(group.label)} · routing {tex(group.base_routing or '-')}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    legend(ax, "marker" if disturbed else None, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    caption = (
        "Median tokens/s with the p10-p90 band of the raw samples; dashed: dense baselines "
        "(param_matched = all expert parameters, flop_matched = the FLOPs of top_k experts)."
    )
    if disturbed:
        caption += " Hollow markers: points timed on a disturbed machine (no finding)."
    return save(fig, out_dir / f"{group.slug}_throughput.png", "Throughput vs tokens", caption)
