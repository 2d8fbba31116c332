"""`render_report(run_dir)`: one run's results as report.md + a self-contained report.html + the PNGs.

It only reads `run.json` and `results.jsonl`; it never runs a benchmark and never reads reports/gallery.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from reports import tables
from reports.document import Block, Heading, Image, Para, Table, to_html, to_markdown
from reports.ep import ep_blocks
from reports.facets import split_groups
from reports.load import LIST_COLUMNS, load_run
from reports.plots import make_plots
from suites.schema import STATUSES


def render_report(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write report.md, report.html, results.csv and the plots into `out_dir` (default RUN_DIR/report).

    Returns the path of report.html. Raises reports.load.RunLoadError (one line) on an unreadable run.
    """
    run_dir = Path(run_dir)
    meta, df = load_run(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("g*_*.png"):
        stale.unlink()

    groups = split_groups(df)
    plotted = make_plots(meta, groups, out)
    labels = {i: g.label for g in groups for i in g.df.index}

    blocks: list[Block] = [*header(meta, run_dir, df)]
    if not len(df):
        blocks.append(Para("results.jsonl has no rows: nothing was measured.", note=True))
    if len(df) and not (df["status"] == "ok").any():
        blocks.append(Para("No point succeeded: there is nothing to plot; see the problems below.", note=True))
    energy_skips = [reason for gp in plotted for name, reason in gp.skipped if name == "energy"]
    all_energy_missing = len(energy_skips) == len(plotted)
    if plotted and all_energy_missing:
        notes = sorted(set(df["energy_note"].dropna()))
        blocks.append(
            Para("Energy: not measured in this run" + (f" ({'; '.join(notes)})." if notes else "."), note=True)
        )

    blocks += problems_section(df, labels)
    for gp in plotted:
        g = gp.group
        blocks.append(Heading(g.label, 2))
        counts = g.df["status"].value_counts()
        blocks.append(Para(f"{len(g.df)} rows: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in STATUSES) + "."))
        headers, rows = tables.winners(g)
        if rows:
            blocks.append(
                Table(headers, rows, "Fastest MoE implementation per point (margin = runner-up / winner - 1)")
            )
        headers, rows = tables.versus_peers(g)
        if rows:
            blocks.append(
                Table(headers, rows, "Our fastest vs the fastest transformers implementation (below 1: ours faster)")
            )
        headers, rows = tables.versus_dense(g)
        if rows:
            blocks.append(Table(headers, rows, "Each MoE implementation vs the dense baselines (above 1x: MoE faster)"))
        for f in gp.files:
            blocks.append(Image(f.path, f.title, f.caption))
        for name, reason in gp.skipped:
            if name == "energy" and all_energy_missing:
                continue
            blocks.append(Para(f"{name} plot skipped: {reason}.", note=True))

    blocks += ep_blocks(run_dir, out)
    title = f"moe-bench report: {meta.get('suite', '?')} on {meta.get('device_name') or meta.get('device', '?')}"
    (out / "report.md").write_text(f"# {title}\n\n" + to_markdown(blocks, out))
    html_path = out / "report.html"
    html_path.write_text(to_html(blocks, title))
    df.drop(columns=list(LIST_COLUMNS)).to_csv(out / "results.csv", index=False)
    return html_path


def header(meta: dict, run_dir: Path, df: pd.DataFrame) -> list[Block]:
    nvml = meta.get("nvml") if isinstance(meta.get("nvml"), dict) else {}
    driver = (
        nvml.get("driver_version")
        or nvml.get("driver")
        or (f"NVML unavailable ({nvml.get('reason', 'no reason given')})" if nvml.get("available") is False else "-")
    )
    env = [
        ("run directory", str(run_dir)),
        ("suite", f"{meta.get('suite', '-')} (hash {meta.get('suite_hash', '-')}, seed {meta.get('seed', '-')})"),
        ("device", f"{meta.get('device', '-')}: {meta.get('device_name', '-')}"),
        ("driver", str(driver)),
        ("torch / CUDA", f"{meta.get('torch_version', '-')} / {meta.get('cuda_version') or '-'}"),
        ("commit", str(meta.get("git_commit", "-"))),
        ("date", f"{meta.get('started', '-')} to {meta.get('finished', '-')}"),
        ("timers", ", ".join(sorted(set(df["timer"].dropna()))) or "-"),
        ("rows", f"{len(df)} ({int((df['status'] == 'ok').sum()) if len(df) else 0} ok)"),
    ]
    blocks: list[Block] = [Heading("Environment"), Table(["", ""], [[k, v] for k, v in env])]
    peaks = meta.get("peaks") or {}
    matmul = peaks.get("matmul_tflops") if isinstance(peaks.get("matmul_tflops"), dict) else {}
    rows = [[f"matmul {dtype}", f"{v:.4g} TFLOP/s"] for dtype, v in sorted(matmul.items()) if v is not None]
    if peaks.get("bandwidth_gbs"):
        rows.append(["memory bandwidth", f"{peaks['bandwidth_gbs']:.4g} GB/s"])
    blocks.append(Heading("Peaks measured at the start of this run"))
    blocks.append(Table(["ceiling", "value"], rows) if rows else Para("run.json records no peaks.", note=True))
    return blocks


def problems_section(df: pd.DataFrame, labels: dict[int, str]) -> list[Block]:
    headers, rows = tables.problems(df, labels)
    blocks: list[Block] = [Heading("Points without a timing")]
    if rows:
        blocks.append(Para(f"{len(rows)} of {len(df)} rows did not produce a timing (wrong, oom, error or skipped):"))
        blocks.append(Table(headers, rows))
    else:
        blocks.append(Para("None: every point produced a timing."))
    return blocks
