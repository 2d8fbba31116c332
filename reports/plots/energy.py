"""Joules per token vs tokens, where NVML measured energy; otherwise a note that says why not."""

from __future__ import annotations

from pathlib import Path

from reports.facets import Group
from reports.plots.style import PlotFile, impl_line, legend, new_figure, order_impls, plain_log_axis, save, tex


def plot(group: Group, meta: dict, out_dir: Path) -> PlotFile | str:
    measured = group.ok[group.ok["joules_per_token"].gt(0)]
    if not len(measured):
        reasons = sorted(set(group.df["energy_note"].dropna()))
        return "energy not measured" + (f" ({'; '.join(reasons)})" if reasons else "")
    impls = order_impls(measured["impl"])
    fig, axes = new_figure()
    ax = axes[0, 0]
    disturbed = False
    for impl in impls:
        line = group.line(impl)
        line = line[line["joules_per_token"].gt(0)]
        if len(line):
            disturbed |= impl_line(ax, impl, impls, line["tokens"], line["joules_per_token"], line["point_disturbed"])
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    plain_log_axis(ax.xaxis, measured["tokens"])
    ax.set_xlabel("tokens per call")
    ax.set_ylabel("energy per token (J/token)")
    ax.set_title(f"Energy per token (NVML)\n{tex(group.label)} · routing {tex(group.base_routing or '-')}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    legend(ax, "marker" if disturbed else None, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    caption = "NVML total-energy counter over the timed loop, per call and per token; dashed: dense baselines."
    if disturbed:
        caption += " Hollow markers: points timed on a disturbed machine (no finding)."
    return save(fig, out_dir / f"{group.slug}_energy.png", "Energy per token", caption)
