"""Roofline: achieved TFLOP/s vs arithmetic intensity, under this run's measured compute and bandwidth ceilings.

Ceiling = min(matmul peak in the group's dtype, bandwidth x intensity), both from run.json `peaks`, never a
datasheet. Intensity = flops / bytes_min, where bytes_min counts only the experts the routing touched.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reports.facets import Group
from reports.plots.style import PlotFile, colour, legend, new_figure, order_impls, save, tex, title_lines


def ceilings(meta: dict, dtype: str | None) -> tuple[float | None, float | None]:
    """(matmul TFLOP/s for dtype, bandwidth GB/s) from run.json peaks; None where not measured."""
    peaks = meta.get("peaks") or {}
    matmul = (peaks.get("matmul_tflops") or {}).get(dtype) if isinstance(peaks.get("matmul_tflops"), dict) else None
    bandwidth = peaks.get("bandwidth_gbs")
    return (float(matmul) if matmul else None), (float(bandwidth) if bandwidth else None)


def plot(group: Group, meta: dict, out_dir: Path) -> PlotFile | str:
    ok = group.ok[group.ok["tflops"].gt(0) & group.ok["arith_intensity"].gt(0)]
    if not len(ok):
        return "no point has both tflops and arith_intensity"
    impls = order_impls(ok["impl"])
    fig, axes = new_figure(width=7.0, height=4.8)
    ax = axes[0, 0]
    for impl in impls:
        rows = ok[ok["impl"] == impl]
        marker = "s" if impl in ("param_matched", "flop_matched") else "o"
        c = colour(impl, impls)
        faces = np.where(rows["point_disturbed"].to_numpy(dtype=bool), "white", c)  # hollow: disturbed point
        ax.scatter(rows["arith_intensity"], rows["tflops"], s=22, marker=marker, c=faces, edgecolors=c, label=tex(impl))
    peak, bandwidth = ceilings(meta, group.dtype())
    lo, hi = ok["arith_intensity"].min() / 4, ok["arith_intensity"].max() * 4
    notes = []
    if bandwidth:
        ridge = peak * 1e3 / bandwidth if peak else hi
        lo, hi = min(lo, ridge / 8), max(hi, ridge * 8)
    x = np.geomspace(lo, hi, 200)
    if peak and bandwidth:
        above = ok[ok["tflops"] > 1.05 * np.minimum(peak, bandwidth * ok["arith_intensity"] / 1e3)]
        if len(above):
            names = ", ".join(sorted(set(above["impl"])))
            notes.append(
                f"{len(above)} points ({names}) lie above the measured ceiling: the peak was measured low or the FLOPs are over-counted"
            )
        ax.plot(x, np.minimum(peak, bandwidth * x / 1e3), color="black", lw=1.2, label="measured ceiling")
        ax.axvline(peak * 1e3 / bandwidth, color="black", lw=0.6, ls=":")
    elif peak:
        ax.axhline(peak, color="black", lw=1.2, label="measured matmul peak")
        notes.append("no bandwidth peak")
    elif bandwidth:
        ax.plot(x, bandwidth * x / 1e3, color="black", lw=1.2, label="measured bandwidth")
        notes.append(f"no matmul peak for {group.dtype()}")
    else:
        notes.append("run.json has no peaks: ceilings not drawn")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP/byte)")
    ax.set_ylabel("achieved TFLOP/s")
    peaks_text = f"peak {peak:.3g} TFLOP/s" if peak else "no matmul peak"
    bw_text = f"{bandwidth:.4g} GB/s" if bandwidth else "no bandwidth"
    ax.set_title(f"Roofline ({peaks_text}, {bw_text}, measured this run)\n{title_lines(tex(group.label))}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    disturbed = bool(ok["point_disturbed"].any())
    legend(ax, "marker" if disturbed else None, fontsize=8)
    if disturbed:
        notes.append("hollow markers: points timed on a disturbed machine (no finding)")
    caption = (
        "Each successful point; the line is min(matmul peak, bandwidth x intensity) measured at the start of the run."
    )
    if notes:
        caption += " Note: " + "; ".join(notes) + "."
    return save(fig, out_dir / f"{group.slug}_roofline.png", "Roofline", caption)
