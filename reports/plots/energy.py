"""Joules per token vs tokens, where NVML measured energy; otherwise a note that says why not."""

from __future__ import annotations

from pathlib import Path

from reports.facets import Group
from reports.plots import style


def plot(group: Group, meta: dict, out_dir: Path) -> style.PlotFile | str:
    measured = group.ok[group.ok["joules_per_token"].gt(0)]
    if not len(measured):
        reasons = sorted(set(group.df["energy_note"].dropna()))
        return "energy not measured" + (f" ({'; '.join(reasons)})" if reasons else "")
    impls = style.order_impls(measured["impl"])
    fig, axes = style.new_figure()
    ax = axes[0, 0]
    disturbed = False
    for impl in impls:
        line = group.line(impl)
        line = line[line["joules_per_token"].gt(0)]
        if len(line):
            points = style.Points(line["tokens"], line["joules_per_token"], line["point_disturbed"])
            disturbed |= style.impl_line(ax, impl, impls, points)
    style.tokens_axes(ax, measured["tokens"])
    ax.set_ylabel("energy per token (J/token)")
    ax.set_title(
        style.group_title("Energy per token (NVML)", group),
        fontsize=10,
    )
    ax.grid(True, which="both", alpha=0.3)
    style.legend(ax, "marker" if disturbed else None, **style.BESIDE)
    caption = "NVML total-energy counter over the timed loop, per call and per token; dashed: dense baselines."
    caption = style.noted(caption, disturbed, style.HOLLOW_NOTE)
    return style.save(fig, out_dir / f"{group.slug}_energy.png", "Energy per token", caption)
