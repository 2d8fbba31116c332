"""`render_report(run_dir)`: one run's results as report.md + a self-contained report.html + the PNGs.

It only reads `run.json` and `results.jsonl`; it never runs a benchmark and never reads reports/gallery. It
writes only where reports.outdir allows, and opens with a banner when points were timed on a disturbed machine.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from reports import tables
from reports.cells import Cell, Number, significant
from reports.disturbed import banner
from reports.document import Block, Heading, Image, Para, Table, to_html, to_markdown
from reports.ep import ep_blocks
from reports.facets import Group, group_index, split_groups
from reports.load import LIST_COLUMNS, load_run
from reports.outdir import claim, record
from reports.plots import GroupPlots, make_plots
from suites.schema import STATUSES

MAX_PLOTTED_GROUPS = 8  # a huge sweep renders in a minute: later groups are shown by their tables, and said so
CACHE_STATES = {
    "cold": "weights and inputs out of cache at every call",
    "warm": "calls back to back on the same weights and inputs, which stay in cache as far as they fit",
}


def render_report(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write report.md, report.html, results.csv and the plots into `out_dir` (default RUN_DIR/report).

    Returns the path of report.html. Raises reports.load.RunLoadError (one line) on an unreadable run and
    reports.outdir.ReportDirError (one line) for an output directory it may not write into.
    """
    run_dir = Path(run_dir)
    meta, df = load_run(run_dir)
    default = run_dir / "report"
    out = Path(out_dir) if out_dir is not None else default
    claim(out, default=out.resolve() == default.resolve())

    groups = split_groups(df)
    per_group = df.assign(group=group_index(df))
    drawn, made = make_plots(
        meta,
        groups[:MAX_PLOTTED_GROUPS],
        out,
        meanwhile=lambda: [tables.winners(per_group), tables.versus_peers(per_group), tables.versus_dense(per_group)],
    )
    plotted = {gp.group.index: gp for gp in drawn}
    labels = {i: g.label for g in groups for i in g.df.index}
    all_energy_missing = bool(plotted) and all(
        any(name == "energy" for name, _ in gp.skipped) for gp in plotted.values()
    )

    blocks: list[Block] = [*banner(df, labels), *header(meta, run_dir, df), *run_notes(df, len(groups))]
    if all_energy_missing:
        blocks.append(energy_note(df))
    blocks += problems_section(df, labels)
    for g in groups:
        found = [(headers, rows.get(g.index, [])) for headers, rows in made]
        blocks += group_blocks(g, found, plotted.get(g.index), all_energy_missing)
    blocks += ep_blocks(run_dir, out)
    title = f"moe-bench report: {meta.get('suite', '?')} on {meta.get('device_name') or meta.get('device', '?')}"
    return write_report(out, title, blocks, df)


def run_notes(df: pd.DataFrame, n_groups: int) -> list[Block]:
    """Notes on the run as a whole: nothing measured, nothing succeeded, groups left unplotted."""
    notes: list[Block] = []
    if not len(df):
        notes.append(Para("results.jsonl has no rows: nothing was measured.", note=True))
    if len(df) and not (df["status"] == "ok").any():
        notes.append(Para("No point succeeded: there is nothing to plot; see the problems below.", note=True))
    if n_groups > MAX_PLOTTED_GROUPS:
        left_out = n_groups - MAX_PLOTTED_GROUPS
        notes.append(
            Para(
                f"Plots are drawn for the first {MAX_PLOTTED_GROUPS} of {n_groups} groups; the other {left_out} "
                "groups are shown by their tables only (every row is in results.csv).",
                note=True,
            )
        )
    return notes


def energy_note(df: pd.DataFrame) -> Para:
    """One note for the whole run when no plotted group measured energy, in place of one per group."""
    notes = sorted(set(df["energy_note"].dropna()))
    return Para("Energy: not measured in this run" + (f" ({'; '.join(notes)})." if notes else "."), note=True)


def write_report(out: Path, title: str, blocks: list[Block], df: pd.DataFrame) -> Path:
    """report.md, report.html and results.csv (every row, full precision) into `out`, recorded as this render's."""
    written = [out / "report.md", out / "report.html", out / "results.csv"]
    written[0].write_text(f"# {title}\n\n" + to_markdown(blocks, out))
    written[1].write_text(to_html(blocks, title))
    csv = df.drop(columns=list(LIST_COLUMNS)).assign(disturbance=df["disturbance"].map(_one_line))
    csv.to_csv(written[2], index=False)
    record(out, [*written, *(b.path for b in blocks if isinstance(b, Image))])
    return written[1]


def _one_line(lines: list[str] | None) -> str | None:
    return "; ".join(lines) if lines else None


TABLE_CAPTIONS = (
    "Fastest MoE implementation per point (margin = runner-up / winner - 1)",
    "Our fastest vs the fastest transformers implementation (below 1: ours faster)",
    "Each MoE implementation vs the dense baselines (above 1x: MoE faster)",
)


def group_blocks(g: Group, found: list[tuple], plots: GroupPlots | None, all_energy_missing: bool) -> list[Block]:
    """One group's section: its counts, its tables (`found`: headers and rows of each) and its plots."""
    blocks: list[Block] = [Heading(g.label, 2)]
    counts = g.df["status"].value_counts()
    blocks.append(Para(f"{len(g.df)} rows: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in STATUSES) + "."))
    blocks += [Table(headers, rows, caption) for (headers, rows), caption in zip(found, TABLE_CAPTIONS) if rows]
    if plots is None:
        blocks.append(Para(f"Plots not drawn: only the first {MAX_PLOTTED_GROUPS} groups are plotted.", note=True))
        return blocks
    blocks += [Image(f.path, f.title, f.caption) for f in plots.files]
    for name, reason in plots.skipped:
        if not (name == "energy" and all_energy_missing):
            blocks.append(Para(f"{name} plot skipped: {reason}.", note=True))
    return blocks


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
        ("cache", cache_state(meta, df)),
        ("rows", Number(len(df), note=f"({int((df['status'] == 'ok').sum()) if len(df) else 0} ok)")),
    ]
    blocks: list[Block] = [Heading("Environment"), Table(["", ""], [[k, v] for k, v in env])]
    peaks = meta.get("peaks") or {}
    matmul = peaks.get("matmul_tflops") if isinstance(peaks.get("matmul_tflops"), dict) else {}
    rows: list[list[Cell]] = [
        [f"matmul {dtype}", Number(v, significant(4, " TFLOP/s"))]
        for dtype, v in sorted(matmul.items())
        if v is not None
    ]
    if peaks.get("bandwidth_gbs"):
        rows.append(["memory bandwidth", Number(peaks["bandwidth_gbs"], significant(4, " GB/s"))])
    blocks.append(Heading("Peaks measured at the start of this run"))
    blocks.append(Table(["ceiling", "value"], rows) if rows else Para("run.json records no peaks.", note=True))
    return blocks


def cache_state(meta: dict, df: pd.DataFrame) -> str:
    """The cache state the rows were timed in (the rows' `cache`), beside the suite's setting when they differ."""
    timing = meta.get("timing") if isinstance(meta.get("timing"), dict) else {}
    setting = timing.get("cache")
    states = df.loc[df["status"] == "ok", "cache"].dropna().value_counts()
    if not len(states):
        return f"not recorded in the rows (suite setting: {setting})" if setting else "not recorded in this run"
    shown = [f"{state}: {CACHE_STATES.get(state, 'as the runner recorded it')}" for state in states.index]
    if len(states) > 1:
        shown = [f"{text} ({count} rows)" for text, count in zip(shown, states)]
    text = "; ".join(shown)
    if setting and set(states.index) != {setting}:
        text += f" (the suite asked for {setting})"
    reads = df["cache_read_mb"][df["cache_read_mb"] > 0] if "cache_read_mb" in df else ()
    if len(reads):
        text += (
            f"; {len(reads)} rows with too few copies to span the LLC read up to {reads.max():.1f} MiB of an "
            "eviction buffer before each call, untimed (cache_read_mb)"
        )
    if "cache_note" in df and df["cache_note"].notna().any():
        notes = df["cache_note"].dropna()
        text += f"; {len(notes)} rows not fully so (e.g. {notes.iloc[0]}; see results.csv cache_note)"
    return text


def problems_section(df: pd.DataFrame, labels: dict[int, str]) -> list[Block]:
    headers, rows = tables.problems(df, labels)
    blocks: list[Block] = [Heading("Points without a timing")]
    if rows:
        blocks.append(
            Para(f"{len(rows)} of {len(df)} rows did not produce a timing (wrong, oom, error, timeout or skipped):")
        )
        blocks.append(Table(headers, rows))
    else:
        blocks.append(Para("None: every point produced a timing."))
    return blocks
