"""Every plot of a report, drawn per (shape, dtype, mode) group; each module draws one kind of figure.

`make_plots` never raises for thin data: a plot that has nothing to draw returns the reason, which the report
prints where the figure would be. Drawing is CPU-bound matplotlib work and no figure depends on another, so a
report of many figures draws them in worker processes, one per core.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import repeat
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path
from typing import TypeVar

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


# Workers are forked: spawn would re-run the caller's main module (`python -m suites` runs the CLI at import).
# A forked worker only draws with matplotlib and numpy, never torch, so torch's threads and CUDA in the parent
# (`moe-bench run` renders at its end) are not touched. Where fork is unavailable the figures are drawn in turn.
MIN_FIGURES_PER_WORKER = 8  # fewer figures than this per worker draw faster in one process
T = TypeVar("T")


def make_plots(
    meta: dict, groups: list[Group], out_dir: Path, meanwhile: Callable[[], T] = lambda: None
) -> tuple[list[GroupPlots], T]:
    """Every figure of `groups`, and what `meanwhile` returns: it runs in this process while the workers draw."""
    tasks = [(group, name) for group in groups for name, _ in PLOTS]
    workers = min(len(tasks) // MIN_FIGURES_PER_WORKER, os.cpu_count() or 1)
    args = ([g for g, _ in tasks], [n for _, n in tasks], repeat(meta), repeat(out_dir))
    if workers > 1 and "fork" in get_all_start_methods():
        with ProcessPoolExecutor(workers, mp_context=get_context("fork")) as pool:
            drawing = pool.map(draw, *args, chunksize=len(PLOTS) // 2)
            extra = meanwhile()
            made = list(drawing)
    else:
        made, extra = list(map(draw, *args)), meanwhile()
    out = {group.index: GroupPlots(group) for group in groups}
    for (group, name), result in zip(tasks, made):
        if isinstance(result, PlotFile):
            out[group.index].files.append(result)
        else:
            out[group.index].skipped.append((name, result))
    return list(out.values()), extra


def draw(group: Group, name: str, meta: dict, out_dir: Path) -> PlotFile | str:
    """One figure of one group: the written file, or why there was nothing to draw."""
    return dict(PLOTS)[name](group, meta, out_dir)


__all__ = ["PLOTS", "GroupPlots", "PlotFile", "make_plots"]
