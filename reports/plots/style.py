"""Shared look of every plot: Agg canvas (no display, no pyplot state), one colour per implementation, saving.

Figures are built with `matplotlib.figure.Figure` directly so rendering in a worker thread or a CI box without a
display never touches a GUI backend. Every name from a results file reaches matplotlib through `tex`, so a `$`
in a shape or implementation name is shown as written instead of parsed as mathtext. Points timed on a
disturbed machine are drawn hollow (markers) or hatched (bars), with a legend entry saying so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")

from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from reports.disturbed import PLOT_LEGEND  # noqa: E402
from reports.load import DENSE_IMPLS  # noqa: E402

HATCH = "xx"  # bars of disturbed points
HOLLOW_NOTE = "Hollow markers: points timed on a disturbed machine (no finding)."
HATCHED_NOTE = "Hatched: timed on a disturbed machine (no finding)."
BESIDE = {"fontsize": 8, "loc": "upper left", "bbox_to_anchor": (1.01, 1.0)}  # a legend right of its axes

_KNOWN = {
    "loop": "#1f77b4",
    "padded": "#ff7f0e",
    "sort_group": "#2ca02c",
    "dense_all": "#d62728",
    "param_matched": "#222222",
    "flop_matched": "#7f7f7f",
}
_EXTRA = ("#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a")


@dataclass(frozen=True)
class PlotFile:
    """One written PNG with the text the report places beside it."""

    path: Path
    title: str
    caption: str


def tex(text) -> str:
    """`text` as matplotlib shows it literally: every `$` escaped, so 'a$x$' is never parsed as mathtext."""
    return str(text).replace("$", r"\$")


@dataclass(frozen=True)
class Points:
    """One line's points: x and y, and whether each was timed on a disturbed machine (array-likes, one per point)."""

    x: object
    y: object
    disturbed: object


def group_title(what: str, group) -> str:
    """A figure's title: what it shows, then its group (facets.Group) and the routing swept over tokens."""
    routing = tex(group.base_routing or "-")
    return f"{what}\n" + title_lines(f"{tex(group.label)} · routing {routing}")


TITLE_CHARS = 60  # about what a 6.4-inch figure's title holds at fontsize 10 beside a legend


def title_lines(text: str) -> str:
    """`text` broken at its ' · ' separators into lines of at most TITLE_CHARS (a longer part stays whole):
    matplotlib clips a title wider than its figure, and a group label names every option off its default."""
    lines: list[str] = []
    for part in text.split(" · "):
        if lines and len(lines[-1]) + 3 + len(part) <= TITLE_CHARS:
            lines[-1] += " · " + part
        else:
            lines.append(part)
    return "\n".join(lines)


def impl_line(ax, impl: str, impls: list[str], points: Points) -> bool:
    """One implementation's line (dashed for a dense baseline), its points timed on a disturbed machine hollow
    (white face, coloured edge); whether there were any."""
    x, y, marked = np.asarray(points.x), np.asarray(points.y), np.asarray(points.disturbed, dtype=bool)
    c = colour(impl, impls)
    ax.plot(x, y, linestyle(impl), marker="o", ms=4, color=c, label=tex(impl))
    if marked.any():
        ax.plot(x[marked], y[marked], ls="none", marker="o", ms=6, mfc="white", mec=c, mew=1.3, zorder=4)
    return bool(marked.any())


def tokens_axes(ax, tokens) -> None:
    """Log-log axes whose x is the swept token counts (a tick at each), labelled as such."""
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    plain_log_axis(ax.xaxis, tokens)
    ax.set_xlabel("tokens per call")


def noted(caption: str, disturbed: bool, note: str) -> str:
    """The caption, then `note` (how points timed on a disturbed machine are drawn) when the figure shows any."""
    return f"{caption} {note}" if disturbed else caption


def legend(ax, disturbed: str | None = None, **kw) -> None:
    """ax.legend, plus an entry for disturbed points when `disturbed` says how they are drawn: marker or hatch."""
    handles, labels = ax.get_legend_handles_labels()
    if disturbed:
        handles.append(disturbed_handle(disturbed))
        labels.append(PLOT_LEGEND)
    if handles:
        ax.legend(handles, labels, **kw)


def disturbed_handle(kind: str):
    if kind == "hatch":
        return Patch(facecolor="white", edgecolor="black", hatch=HATCH)
    return Line2D([], [], ls="none", marker="o", mfc="white", mec="black", mew=1.3)


def colour(impl: str, impls: list[str]) -> str:
    if impl in _KNOWN:
        return _KNOWN[impl]
    others = sorted(i for i in impls if i not in _KNOWN)
    return _EXTRA[others.index(impl) % len(_EXTRA)] if impl in others else "#000000"


def linestyle(impl: str) -> str:
    return "--" if impl in DENSE_IMPLS else "-"


def new_figure(ncols: int = 1, nrows: int = 1, width: float = 6.4, height: float = 4.2, **kw):
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def save(fig: Figure, path: Path, title: str, caption: str) -> PlotFile:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)  # readable on screen; keeps a self-contained report.html near 2 MB
    return PlotFile(path, title, caption)


def order_impls(impls) -> list[str]:
    """MoE implementations first (known ones in a fixed order), dense baselines last."""
    known = list(_KNOWN)
    return sorted(set(impls), key=lambda i: (i in DENSE_IMPLS, known.index(i) if i in known else len(known), i))


def plain_log_axis(axis, values=None) -> None:
    """Log axis labelled with plain numbers (1, 16, 256; 0.2, 0.5, 2) instead of powers of ten.

    With `values`, major ticks sit exactly at them (the swept token counts) and minor ticks are unlabelled.
    """
    import math

    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter

    def minor(v, _):
        return f"{v:g}" if v > 0 and round(v / 10 ** math.floor(math.log10(v))) in (2, 5) else ""

    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    if values is not None and len(set(values)):
        axis.set_major_locator(FixedLocator(sorted(set(values))))
        axis.set_minor_formatter(NullFormatter())
    else:
        axis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))  # only the labelled minors: each tick costs a draw
        axis.set_minor_formatter(FuncFormatter(minor))


def mark_missing(ax, x: float, status: str) -> None:
    """Write a failed point's status where its bar would stand, so a missing bar is never silent."""
    ax.annotate(
        status,
        (x, 0),
        xytext=(0, 3),
        textcoords="offset points",
        rotation=90,
        ha="center",
        va="bottom",
        fontsize=7,
        color="#b00020",
    )


def failed_at(group, tokens: float, exclude=()) -> dict[str, str]:
    """impl -> status of the rows at `tokens` (base routing for MoE rows) that did not produce a timing."""
    rows = group.df[
        (group.df["tokens"] == tokens) & (group.df["status"] != "ok") & ~group.df["impl"].isin(list(exclude))
    ]
    rows = rows[(rows["family"] != "moe") | (rows["routing"].fillna("") == (group.base_routing or ""))]
    return dict(zip(rows["impl"], rows["status"]))
