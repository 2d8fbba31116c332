"""Peak memory per implementation and baseline, split into weights, the weight gradients a train call leaves,
activations (and workspace) and the rest.

Shown at the smallest and the largest token count of the sweep: weights dominate at decode sizes, activations
(and padded's padding, dense_all's idle rows) at prefill sizes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from reports.cells import fmt_value
from reports.disturbed import PLOT_LEGEND
from reports.facets import Group
from reports.plots import style

MIB = 2**20
CAPTION = (
    "Stacked: parameter bytes (all experts resident), their gradients (train), activations and workspace, and "
    "the rest of the peak (the input). MoE pays for every expert in weights; dense_all and padded also in "
    "activations. "
    "Hatched: a footprint the runner predicted and did not run, because it could not fit."
)


@dataclass
class Stack:
    """One panel's bars in MiB, one position per implementation; a failed one has empty bars and its status."""

    names: list[str] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    grads: list[float] = field(default_factory=list)
    activations: list[float] = field(default_factory=list)
    rest: list[float] = field(default_factory=list)
    disturbed: list[bool] = field(default_factory=list)  # measured positions only (they come first)
    missing: dict[int, str] = field(default_factory=dict)  # position -> status
    predicted: dict[int, float] = field(default_factory=dict)  # skipped position -> predicted MiB

    def add(self, impl: str, weights: float, grads: float, activations: float, rest: float) -> None:
        self.names.append(impl)
        self.weights.append(weights / MIB)
        self.grads.append(grads / MIB)
        self.activations.append(activations / MIB)
        self.rest.append(rest / MIB)


def plot(group: Group, meta: dict, out_dir: Path) -> style.PlotFile | str:
    ok = group.ok[group.ok["peak_mem_bytes"].notna()]
    impls = style.order_impls(ok["impl"])
    lines = {impl: group.line(impl) for impl in impls}
    lines = {impl: line[line["peak_mem_bytes"].notna()] for impl, line in lines.items()}
    tokens = sorted({t for line in lines.values() for t in line["tokens"]})
    if not tokens:
        return "no memory was measured"
    panels = [tokens[0]] if len(tokens) == 1 else [tokens[0], tokens[-1]]
    fig, axes = style.new_figure(ncols=len(panels), width=4.8)
    disturbed = False
    for ax, t in zip(axes[0], panels):
        disturbed |= _draw(ax, _stack(group, lines, t), t)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if disturbed:
        handles, labels = [*handles, style.disturbed_handle("hatch")], [*labels, PLOT_LEGEND]
    fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=8)
    how = ", ".join(sorted(set(ok["mem_kind"].dropna()))) or "unknown"
    fig.suptitle(f"Peak memory per call ({how})\n{style.title_lines(style.tex(group.label))}", fontsize=10)
    caption = style.noted(CAPTION, disturbed, "Cross-hatched: measured at a point timed on a disturbed machine.")
    return style.save(fig, out_dir / f"{group.slug}_memory.png", "Peak memory", caption)


def _stack(group: Group, lines: dict[str, pd.DataFrame], tokens: float) -> Stack:
    """The bars at `tokens`: each measured implementation split into weights, gradients, activations and the
    rest, then each that failed there (a skipped one at its predicted footprint, when the runner predicted one).
    A row without grad_bytes (forward, or written before them) shows none; one without activation_bytes shows
    its peak above the weights and gradients as activations."""
    stack = Stack()
    for impl, line in lines.items():
        rows = line[line["tokens"] == tokens]
        if not len(rows):
            continue
        r = rows.iloc[0]
        peak = r["peak_mem_bytes"]
        w = r["weight_bytes"] if pd.notna(r["weight_bytes"]) else 0.0
        g = r["grad_bytes"] if pd.notna(r["grad_bytes"]) else 0.0
        a = max(r["activation_bytes"] if pd.notna(r["activation_bytes"]) else peak - w - g, 0.0)
        stack.add(impl, w, g, a, max(peak - w - g - a, 0.0))
        stack.disturbed.append(bool(r["point_disturbed"]))
    for impl, status in style.failed_at(group, tokens, exclude=stack.names).items():
        guess = _predicted(group, impl, tokens) if status == "skipped" else None
        if guess is not None:
            stack.predicted[len(stack.names)] = guess / MIB
        stack.missing[len(stack.names)] = status
        stack.add(impl, 0.0, 0.0, 0.0, 0.0)
    return stack


def _draw(ax, stack: Stack, tokens: float) -> bool:
    """One panel's stacked bars; whether any measured bar was timed on a disturbed machine (cross-hatched)."""
    for x, status in stack.missing.items():
        style.mark_missing(ax, x, status)
    x = np.arange(len(stack.names))
    ax.bar(x, stack.weights, color="#4c72b0", label="weights")
    if any(stack.grads):
        ax.bar(x, stack.grads, bottom=stack.weights, color="#55a868", label="weight gradients")
    below = np.add(stack.weights, stack.grads)
    ax.bar(x, stack.activations, bottom=below, color="#dd8452", label="activations + workspace")
    top = np.add(below, stack.activations)
    ax.bar(x, stack.rest, bottom=top, color="#c7c7c7", label="input + other")
    marked = stack.disturbed
    if any(marked):
        heights = np.add(top, stack.rest)[: len(marked)][marked]
        ax.bar(x[: len(marked)][marked], heights, fill=False, hatch=style.HATCH, edgecolor="#444444", linewidth=0)
    if stack.predicted:
        ax.bar(
            list(stack.predicted),
            list(stack.predicted.values()),
            fill=False,
            hatch="//",
            edgecolor="#b00020",
            label="predicted, not run (skipped)",
        )
    ax.set_xticks(x, [style.tex(n) for n in stack.names], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("peak memory (MiB)")
    ax.set_title(f"T = {fmt_value(tokens)}", fontsize=9)
    ax.grid(True, axis="y", alpha=0.3)
    return any(marked)


def _predicted(group: Group, impl: str, tokens: float) -> float | None:
    """Bytes the runner predicted for a row it skipped (e.g. transformers' batched_mm weight gathers)."""
    if "predicted_mem_bytes" not in group.df:
        return None
    rows = group.df[(group.df["impl"] == impl) & (group.df["tokens"] == tokens)]["predicted_mem_bytes"].dropna()
    return float(rows.iloc[0]) if len(rows) else None
