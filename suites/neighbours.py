"""`moe-bench neighbours [SUITE]`: does a row's time on this machine depend on the rows timed beside it?

The runner times a point's rows round-robin, so drift is shared; the protocol (cache state, re-entry calls, the
worker's allocator settings) is meant to make each row's time what it would be alone. This checks it, point by
point: each try times the point's round-robin and then every row alone, in one worker as a run starts it;
odd tries run the rows alone first, in reverse, so that drift of the machine during a try cancels over the tries.
A cell is the median over tries of the row's median with its neighbours over its median alone. A cell outside the
tolerance is a miss when every try lies on the same side of 1 (the neighbours moved the row the same way each time),
and has no verdict when its tries lie on both sides of 1: there the host's own drift between the halves of a try is
wider than the tolerance, and the cell says nothing about the protocol. Each cell outside is listed with its tries.
A try of a row counts only when neither of its two timings was flagged as taken on a disturbed machine
(suites/steadiness.py: on a shared host, mostly the host moving this process's CPUs, which moved sort_group's
train step by 1.4x): such a try is left out and taken again (only the rows still short of --tries steady tries are
timed alone again), up to RETAKES x --tries tries a point. Each point says how many of its timings were flagged.
With --tries 2 or more, a cell is judged only from steady tries in both orders: a row whose steady tries all ran in
one order has no verdict (on a host that drifts, a cell from one order measured the drift between the two halves,
as one try of padded at 1.24 did while 41 of 72 of its point's timings were flagged).
A point's line is printed as soon as it is measured. Exit 0 when every cell is within
`--within` of 1, 1 when a cell is a miss (or a row was not measured), 3 when the only cells outside have no verdict,
no steady try or steady tries in one order only (measure again on a quieter machine), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from suites import spec
from suites.plan import label
from suites.runner import resolve_device
from suites.suite_model import Point, Suite
from suites.worker import Worker, WorkerSpec

RunPoint = Callable[[Point, list[str]], Iterable[dict]]  # Worker.run_point without its note


RETAKES = 2  # a point takes at most RETAKES x --tries tries to find --tries steady ones for each row


@dataclass(frozen=True)
class PointRatios:
    label: str
    ratios: dict[str, float | None]  # row -> median of with-neighbours / alone; None when no steady try measured it
    tries: dict[str, list[float]]  # row -> each steady try's with-neighbours / alone, in the order they ran
    timings: int  # the worker's timings of the point: one with its neighbours and one per row alone, each try
    disturbed: int  # how many of them the runner flagged as timed on a disturbed machine
    left_out: dict[str, int] = field(default_factory=dict)  # row -> tries left out: a timing of it was flagged
    unmeasured: frozenset[str] = frozenset()  # rows a try did not measure (the row failed)
    one_sided: frozenset[str] = frozenset()  # rows whose steady tries all ran in one order (of 2 or more asked)


def measure(points: Sequence[Point], rows: Sequence[str], run_point: RunPoint, tries: int) -> Iterator[PointRatios]:
    """The table, one point at a time as each is measured (see the module docstring for the order of each try)."""
    return (_point(p, list(rows), run_point, tries) for p in points)


def _point(point: Point, rows: list[str], run_point: RunPoint, tries: int) -> PointRatios:
    per_try: dict[str, list[float]] = {r: [] for r in rows}
    orders: dict[str, set[bool]] = {r: set() for r in rows}  # alone first or not, of each steady try
    left_out = dict.fromkeys(rows, 0)
    missing: set[str] = set()
    flags: list[bool] = []

    def timed(todo: list[str]) -> dict[str, tuple[float, bool]]:
        found = list(run_point(point, todo))
        flags.append(any(row.get("disturbed") for row in found))
        return {
            row["impl"]: (row["latency_ms_median"], bool(row.get("disturbed")))
            for row in found
            if row.get("status") == "ok"
        }

    def one_order(r: str) -> bool:
        return tries > 1 and len(orders[r]) < 2

    def short(r: str) -> bool:
        return len(per_try[r]) < tries or one_order(r)

    def wanted() -> list[str]:
        return [r for r in rows if r not in missing and short(r)]

    for i in range(tries * RETAKES):
        todo = wanted()
        if not todo:
            break
        if i % 2 == 0:
            together, alone = timed(rows), _alone(todo, timed)
        else:
            alone = _alone(todo[::-1], timed)
            together = timed(rows)
        for r in todo:
            if r not in together or r not in alone:
                missing.add(r)
            elif together[r][1] or alone[r][1]:
                left_out[r] += 1
            else:
                per_try[r].append(together[r][0] / alone[r][0])
                orders[r].add(i % 2 == 1)
    ratios = {r: statistics.median(per_try[r]) if per_try[r] and r not in missing else None for r in rows}
    one_sided = frozenset(r for r in rows if ratios[r] is not None and one_order(r))
    return PointRatios(label(point), ratios, per_try, len(flags), sum(flags), left_out, frozenset(missing), one_sided)


def _alone(order: list[str], timed: Callable[[list[str]], dict]) -> dict[str, tuple[float, bool]]:
    found: dict[str, tuple[float, bool]] = {}
    for r in order:
        found.update(timed([r]))
    return found


def render(table: list[PointRatios], rows: Sequence[str], within: float) -> str:
    return header(rows) + "".join(line(p, rows) for p in table) + summary(table, within)


def header(rows: Sequence[str]) -> str:
    return "| point | " + " | ".join(rows) + " | disturbed |\n" + "|---|" + "---|" * (len(rows) + 1) + "\n"


def line(p: PointRatios, rows: Sequence[str]) -> str:
    cells = ["-" if p.ratios[r] is None else f"{p.ratios[r]:.3f}" for r in rows]
    return f"| {p.label} | " + " | ".join(cells) + f" | {p.disturbed} of {p.timings} |\n"


def verdict(ratio: float | None, tries: Sequence[float], within: float) -> str:
    """within, miss (outside, every try on the same side of 1), spread (outside, tries on both sides) or unmeasured."""
    if ratio is None:
        return "unmeasured"
    if abs(ratio - 1) <= within:
        return "within"
    return "miss" if all(t > 1 for t in tries) or all(t < 1 for t in tries) else "spread"


def _verdict(p: PointRatios, row: str, within: float) -> str:
    """A row's verdict at its point; `disturbed` when it was measured, but no try of it on a steady machine;
    `one-sided` when its steady tries all ran in one order."""
    if p.ratios[row] is None and row not in p.unmeasured and p.left_out.get(row):
        return "disturbed"
    if row in p.one_sided:
        return "one-sided"
    return verdict(p.ratios[row], p.tries[row], within)


def _verdicts(table: list[PointRatios], within: float) -> list[tuple[PointRatios, str, str]]:
    return [(p, r, _verdict(p, r, within)) for p in table for r in p.ratios]


def summary(table: list[PointRatios], within: float) -> str:
    """The count within the tolerance, the misses and the cells without a verdict, then each cell outside with its
    tries."""
    cells = _verdicts(table, within)
    values = [p.ratios[r] for p, r, v in cells if p.ratios[r] is not None]
    kinds = ("within", "miss", "spread", "one-sided", "disturbed", "unmeasured")
    counts = {kind: sum(v == kind for _, _, v in cells) for kind in kinds}
    count = f"{counts['within']} of {len(cells)} cells within {within:.0%}"
    if values:
        count += f" ({min(values):.3f} to {max(values):.3f})"
    count += f"; {counts['miss']} outside it on every try"
    if counts["spread"]:
        count += (
            f"; {counts['spread']} without a verdict (tries on both sides of 1: the host drifted more than"
            f" {within:.0%} between the halves of a try)"
        )
    if counts["one-sided"]:
        count += (
            f"; {counts['one-sided']} without a verdict (steady tries in one order only: the drift between the halves"
            " of a try does not cancel)"
        )
    if counts["disturbed"]:
        count += f"; {counts['disturbed']} without a steady try (every try of the row had a disturbed timing)"
    if counts["unmeasured"]:
        count += f"; {counts['unmeasured']} not measured (a row failed)"
    shown = {"miss": "miss", "spread": "no verdict", "one-sided": "no verdict, one order"}
    outside = [
        f"- {r} at {p.label}: {p.ratios[r]:.3f} ({shown[v]}), tries " + ", ".join(f"{t:.2f}" for t in p.tries[r])
        for p, r, v in cells
        if v in shown
    ]
    flagged, timings = sum(p.disturbed for p in table), sum(p.timings for p in table)
    if flagged:
        left = sum(sum(p.left_out.values()) for p in table)
        count += (
            f"\n{flagged} of {timings} timings were flagged as taken on a disturbed machine (suites/steadiness.py);"
            f" {left} tries of a row that had one were left out of its cell and taken again, up to {RETAKES}x"
            " --tries tries a point"
        )
    return "\n" + count + "\n" + "".join(f"{o}\n" for o in outside)


def exit_code(table: list[PointRatios], within: float) -> int:
    """0 every cell within, 1 a miss or an unmeasured row, 3 only cells without a verdict outside."""
    kinds = {v for _, _, v in _verdicts(table, within)}
    if kinds & {"miss", "unmeasured"}:
        return 1
    return 3 if kinds & {"spread", "one-sided", "disturbed"} else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "neighbours", help="check that each row's time does not depend on the rows timed beside it"
    )
    parser.add_argument("suite", nargs="?", default="cpu", help="suite name or TOML path (default: cpu)")
    parser.add_argument(
        "--tries", type=int, default=4, help="tries per point, in alternating order; even balances them (default 4)"
    )
    parser.add_argument("--within", type=float, default=0.05, help="tolerance as a fraction (default 0.05)")
    parser.add_argument("--only", help="comma-separated rows (implementations and baselines) to check")
    parser.set_defaults(func=cmd_neighbours)


def cmd_neighbours(args: argparse.Namespace) -> int:
    try:
        suite = spec.load(args.suite)
        rows = _rows(suite, args.only)
        if args.tries < 1:
            raise ValueError(f"--tries: expected at least 1, got {args.tries}")
        if not 0 < args.within < 1:
            raise ValueError(f"--within: expected a fraction between 0 and 1, got {args.within}")
    except ValueError as exc:
        print(f"moe-bench neighbours: {exc}", file=sys.stderr)
        return 2
    device = str(resolve_device(None))
    worker = Worker(WorkerSpec(device, torch.get_num_threads(), suite.seed, suite.timing, suite.dtypes))
    points = len(suite.points)
    print(f"moe-bench neighbours: suite {suite.name} ({points} points, {args.tries} tries each) on {device}")
    print(header(rows), end="", flush=True)
    table = []
    try:
        for p in measure(suite.points, rows, lambda p, todo: list(worker.run_point(p, todo, None)), args.tries):
            table.append(p)
            print(line(p, rows), end="", flush=True)
    finally:
        worker.close()
    print(summary(table, args.within), end="")
    return exit_code(table, args.within)


def _rows(suite: Suite, only: str | None) -> list[str]:
    rows = [*suite.impls, *suite.baselines]
    if only is None:
        return rows
    wanted = [name.strip() for name in only.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in rows]
    if unknown or not wanted:
        raise ValueError(f"--only: expected rows of suite {suite.name} ({', '.join(rows)}), got {only!r}")
    return wanted
