"""How results are shown and judged: plots, report.md/report.html, and regression verdicts between runs.

Reads results files only (see suites/schema.py); never runs a benchmark. `render_report` is the entry point the
runner calls at the end of a run; it is imported lazily so `moe-bench --help` does not load matplotlib.
"""

from __future__ import annotations


def render_report(run_dir, out_dir=None):
    from reports.render import render_report as render

    return render(run_dir, out_dir)


__all__ = ["render_report"]
