"""The Markdown of a comparison (`moe-bench compare`'s output and its CI comment)."""

from __future__ import annotations

import numpy as np

from reports.cells import fmt_ms
from reports.compare import MAX_LISTED, VERDICTS, Comparison


def comparison_markdown(c: Comparison) -> str:
    """The verdict table, the failing and unmatched rows, the notes and the PASS/FAIL line."""
    unit = "ms" if c.metric == "latency" else f"x {c.reference}"
    lines = [
        f"### moe-bench compare (metric {c.metric}, threshold {c.threshold:.1%}, alpha {c.alpha:g})",
        "",
        "| point | impl | base | new | change | 95% CI | p | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    order = {v: i for i, v in enumerate(VERDICTS)}
    for p in sorted(c.points, key=lambda p: (order[p.verdict], -p.change)):
        base, new = (fmt_ms(p.base), fmt_ms(p.new)) if c.metric == "latency" else (f"{p.base:.4g}", f"{p.new:.4g}")
        verdict = f"**{p.verdict}**" if p.verdict == "slower" else p.verdict
        if p.note:
            verdict += f" ({p.note})".replace("|", "\\|")
        ci = f"{p.ci[0]:.3f}-{p.ci[1]:.3f}" if np.isfinite(p.ci[0]) else "-"
        lines.append(f"| {p.point} | {p.impl} | {base} | {new} | {p.change:.3f}x | {ci} | {p.p:.2g} | {verdict} |")
    lines.append("")
    lines.append(f"base and new are medians in {unit}; change = new / base.")
    if c.broken:
        lines += [
            "",
            "Points that were ok in BASE and fail in NEW:",
            "",
            "| point | impl | status | reason |",
            "|---|---|---|---|",
        ]
        lines += [f"| {pt} | {impl} | {st} | {why} |" for pt, impl, st, why in c.broken]
    lines += _listed(c.only_base, "Rows of BASE missing from NEW (a lost row fails the comparison):")
    lines += _listed(c.only_new, "Rows only in NEW (new points or implementations; not compared):")
    lines += [f"\nNote: {n}" for n in c.notes]
    counts = ", ".join(f"{c.count(v)} {v}" for v in VERDICTS)
    status = "FAIL" if c.exit_code else "PASS"
    unjudged = sum(p.disturbed and p.verdict == "ambiguous" for p in c.points)
    disturbed = f" ({unjudged} of them disturbed, no verdict{'; --strict fails them' * c.strict})"
    lines.append(
        f"\n**{status}**: {len(c.points)} compared: {counts}{disturbed * bool(unjudged)}; "
        f"{len(c.broken)} newly failing; {len(c.only_base)} missing from NEW; {len(c.only_new)} only in NEW."
    )
    return "\n".join(lines) + "\n"


def _listed(rows: list[tuple[str, str, str]], title: str) -> list[str]:
    if not rows:
        return []
    lines = ["", title, "", "| point | impl | status |", "|---|---|---|"]
    lines += [f"| {pt} | {impl} | {status} |" for pt, impl, status in rows[:MAX_LISTED]]
    if len(rows) > MAX_LISTED:
        lines.append(f"\n... and {len(rows) - MAX_LISTED} more rows not listed.")
    return lines
