"""Every plot of a report, drawn per (shape, dtype, mode) group; each module draws one kind of figure.

`make_plots` never raises for thin data: a plot that has nothing to draw returns the reason, which the report
prints where the figure would be.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from reports.facets import Group
from reports.plots import energy, experts, latency, memory, roofline, skew, speedup, throughput
from reports.plots.style import PlotFile

PLOTS = (
    ("throughput", throughput.plot),
    ("latency", latency.plot),
    ("memory", memory.plot),
    ("speedup", speedup.plot),
    ("skew", skew.plot),
    ("experts", experts.plot),
    ("roofline", roofline.plot),
    ("energy", energy.plot),
)


@dataclass
class GroupPlots:
    group: Group
    files: list[PlotFile] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def make_plots(meta: dict, groups: list[Group], out_dir: Path) -> list[GroupPlots]:
    out = []
    for group in groups:
        result = GroupPlots(group)
        for name, draw in PLOTS:
            made = draw(group, meta, out_dir)
            if isinstance(made, PlotFile):
                result.files.append(made)
            else:
                result.skipped.append((name, made))
        out.append(result)
    return out


__all__ = ["PLOTS", "GroupPlots", "PlotFile", "make_plots"]
