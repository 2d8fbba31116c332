"""Throughput vs tokens per call: every implementation, with both dense baselines as dashed reference lines.

Median tokens/s with a p10-p90 band computed from the raw samples (tokens / p90 latency .. tokens / p10 latency).
"""

from __future__ import annotations

from pathlib import Path

from reports.facets import Group
from reports.load import latency_band
from reports.plots.style import PlotFile, colour, linestyle, new_figure, order_impls, plain_log_axis, save


def plot(group: Group, meta: dict, out_dir: Path) -> PlotFile | str:
    impls = order_impls(group.ok["impl"])
    fig, axes = new_figure()
    ax = axes[0, 0]
    drawn = 0
    for impl in impls:
        line = group.line(impl)
        if not len(line):
            continue
        bands = [latency_band(r) for _, r in line.iterrows()]
        tokens = line["tokens"].to_numpy()
        median = tokens / [b[0] / 1e3 for b in bands]
        low = tokens / [b[2] / 1e3 for b in bands]
        high = tokens / [b[1] / 1e3 for b in bands]
        c = colour(impl, impls)
        ax.plot(tokens, median, linestyle(impl), marker="o", ms=4, color=c, label=impl)
        ax.fill_between(tokens, low, high, color=c, alpha=0.12, linewidth=0)
        drawn += 1
    if not drawn:
        return "no successful points"
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    plain_log_axis(ax.xaxis, group.ok["tokens"])
    ax.set_xlabel("tokens per call")
    ax.set_ylabel("throughput (tokens/s)")
    ax.set_title(f"Throughput vs tokens\n{group.label} · routing {group.base_routing or '-'}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    caption = (
        "Median tokens/s with the p10-p90 band of the raw samples; dashed: dense baselines "
        "(param_matched = all expert parameters, flop_matched = the FLOPs of top_k experts)."
    )
    return save(fig, out_dir / f"{group.slug}_throughput.png", "Throughput vs tokens", caption)
