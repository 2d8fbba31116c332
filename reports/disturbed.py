"""Points timed on a disturbed machine: which they are and why, for the report's banner and compare's notes.

The runner watches the machine while a point's rows are timed and marks each row `disturbed`, with one line
per signal past its threshold in `disturbance` (suites/schema.py). A number taken then is no finding: reports
show it, marked, and draw no verdict from it (tables.py, the plots, compare.py). A point is disturbed when any
of its rows is (reports.load adds `point_disturbed`).
"""

from __future__ import annotations

import pandas as pd

from reports.cells import fmt_value, number
from reports.document import Block, Para, Table
from reports.facets import point_key
from suites.schema import late_canary_reason, run_baseline_ms

DISTURBED = "(disturbed)"  # beside a value in a table
NO_VERDICT = "disturbed, no verdict"  # in place of a verdict
PLOT_LEGEND = "disturbed: no finding"  # the legend entry of hollow markers and hatched bars
MAX_BANNER_POINTS = 50


def rejudge_canary(df: pd.DataFrame, limit: float) -> None:
    """Marks disturbed, in place, the rows whose canary is more than `limit` above the run's last baseline.

    The worker judges each window against the baseline it holds then, and a clean window faster by more than
    the limit lowers it for the windows after (suites/watch.py): the start was the slowed one. The points timed
    before it, on that slowed machine, are judged here, so which points are flagged does not depend on whether
    the machine was slow at the start of the run or later.
    """
    cols = [df[c].astype(object).where(df[c].notna(), None) for c in ("canary_ms", "canary_baseline_ms")]
    windows = list(zip(*cols, df["disturbed"].eq(True)))
    final = run_baseline_ms(windows, limit)
    for i, (canary, baseline, _) in zip(df.index, windows):
        if reason := late_canary_reason(canary, baseline, final, limit):
            df.at[i, "disturbed"] = True
            df.at[i, "disturbance"] = [*(df.at[i, "disturbance"] or []), reason]


def reasons_by_point(df: pd.DataFrame) -> dict[str, str]:
    """Point key (facets.point_key) -> the disturbance lines of its rows on one line, for every disturbed point."""
    rows = df[df["disturbed"].eq(True)]
    found: dict[str, list[str]] = {}
    for key, lines in zip(point_key(df)[rows.index], rows["disturbance"]):
        seen = found.setdefault(key, [])
        seen += [line for line in lines or [] if line not in seen]
    return {key: "; ".join(lines) or "no reason recorded" for key, lines in found.items()}


def banner(df: pd.DataFrame, labels: dict[int, str]) -> list[Block]:
    """The report's opening warning: every disturbed point (group, tokens, routing, its disturbed rows) and why."""
    marked = df[df["point_disturbed"]]
    if not len(marked):
        return []
    keys = point_key(df)
    reasons = reasons_by_point(df)
    points = marked.assign(_key=keys[marked.index]).groupby("_key", sort=False)
    rows = []
    for key, pts in points:
        first = pts.iloc[0]
        impls = ", ".join(sorted(pts.loc[pts["disturbed"].eq(True), "impl"])) or "-"
        label = labels.get(pts.index[0], "-")
        rows.append([label, number(first["tokens"]), fmt_value(first["routing"]), impls, reasons.get(key, "-")])
    total = keys.nunique()
    blocks: list[Block] = [
        Para(
            f"Disturbed machine: {len(rows)} of {total} points were timed while a signal of the machine's "
            f"steadiness passed its threshold. Their numbers are shown, marked {DISTURBED} in tables and hollow or "
            "hatched in plots, and no verdict (winner, ours vs transformers, MoE vs dense) is drawn from them.",
            note=True,
        ),
        Table(["group", "tokens", "routing", "rows disturbed", "why"], rows[:MAX_BANNER_POINTS]),
    ]
    if len(rows) > MAX_BANNER_POINTS:
        more = len(rows) - MAX_BANNER_POINTS
        blocks.append(Para(f"... and {more} more disturbed points, each marked where it appears.", note=True))
    return blocks
