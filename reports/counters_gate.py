"""`moe-bench compare BASE NEW --metric counters`: an exact gate on the deterministic counters of two runs.

The counters (suites/schema.py, `# deterministic counters`) are integers that depend only on the code and the
input, never on the machine's noise, so there is no statistics here: per (point, implementation) a row fails when

    host_syncs     grew at all: a new host synchronisation stalls every call on a GPU and breaks CUDA graphs
    aten_ops       grew by more than ATEN_OPS_GROWTH: more launches (a view or a cast more is not a regression)
    launch_ops     grew by more than ATEN_OPS_GROWTH (checked where both runs counted it)
    counted_flops  changed at all, either way: the same layer on the same input must do the same matmuls
    alloc_bytes    changed at all, either way: a new buffer, or a different shape of one

or when it succeeded in BASE and is wrong/oom/error in NEW. Fewer syncs or ops pass and are listed as changes.
Exit codes: 0 pass, 1 a row fails, 2 no row has counters in both runs (or the runs cannot be read).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from reports.compare import BROKEN, CompareInputError, _label, _match
from reports.load import load_run

COUNTERS = ("counted_flops", "aten_ops", "host_syncs", "alloc_bytes")
# An op count moves with harmless edits (a reshape, a dtype cast, torch's own decompositions between versions);
# 10% more ops in one layer is real extra work at launch-bound sizes.
ATEN_OPS_GROWTH = 0.10


def _more_syncs(base: int, new: int) -> str | None:
    return f"{new - base} new host sync{'s' if new - base > 1 else ''}" if new > base else None


def _many_more_ops(base: int, new: int) -> str | None:
    if new > base * (1 + ATEN_OPS_GROWTH):
        return f"+{new / base - 1:.1%} > {ATEN_OPS_GROWTH:.0%}" if base else "ops where there were none"
    return None


def _any_change(base: int, new: int) -> str | None:
    if new == base:
        return None
    return f"{new / base - 1:+.3%}" if base else "changed"


# counter -> why (base, new) fails, or None when it passes
RULES: dict[str, Callable[[int, int], str | None]] = {
    "counted_flops": _any_change,
    "aten_ops": _many_more_ops,
    "launch_ops": _many_more_ops,  # newer than the others: a run without it is compared on the rest
    "host_syncs": _more_syncs,
    "alloc_bytes": _any_change,
}


@dataclass(frozen=True)
class Change:
    counter: str
    base: int
    new: int
    failure: str | None  # why it fails the gate; None for a change within the rules

    def text(self) -> str:
        why = f" ({self.failure})" if self.failure else ""
        return f"{self.counter} {self.base} -> {self.new}{why}"


@dataclass(frozen=True)
class RowCheck:
    point: str
    impl: str
    changes: tuple[Change, ...]  # every counter that differs, failing or not

    @property
    def failures(self) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if c.failure)

    def line(self) -> str:
        """One line: the failing counters with both values (then any other change), or the changes of a passing row."""
        failures = self.failures
        head = "; ".join(c.text() for c in failures or self.changes)
        others = [c.text() for c in self.changes if failures and not c.failure]
        tail = f" (also {'; '.join(others)})" if others else ""
        return f"- {'FAIL' if failures else 'changed'} {self.point} | {self.impl}: {head}{tail}"


@dataclass
class CountersGate:
    rows: list[RowCheck] = field(default_factory=list)
    broken: list[tuple[str, str, str, str]] = field(default_factory=list)
    uncounted: tuple[int, int] = (0, 0)  # ok rows without counters in BASE, in NEW
    unmatched: tuple[int, int] = (0, 0)
    notes: list[str] = field(default_factory=list)

    @property
    def failing(self) -> list[RowCheck]:
        return [r for r in self.rows if r.failures]

    @property
    def exit_code(self) -> int:
        return 1 if self.failing or self.broken else 0

    def markdown(self) -> str:
        growth = f"{ATEN_OPS_GROWTH:.0%}"
        lines = [
            f"### moe-bench compare (metric counters: exact; aten_ops and launch_ops may grow {growth}, host_syncs may fall)"
        ]
        failing = [r.line() for r in self.failing]
        failing += [f"- FAIL {pt} | {impl}: status ok -> {st} ({why})" for pt, impl, st, why in self.broken]
        if failing:
            lines += ["", *failing]
        changed = [r for r in self.rows if r.changes and not r.failures]
        if changed:
            lines += ["", "Changes within the rules:", ""] + [r.line() for r in changed]
        base, new = self.uncounted
        if base or new:
            lines.append(f"\nNote: {base} rows in BASE and {new} in NEW have no counters (not counted); not compared.")
        only_base, only_new = self.unmatched
        if only_base or only_new:
            lines.append(f"\nNot matched: {only_base} rows only in BASE, {only_new} only in NEW.")
        lines += [f"\nNote: {n}" for n in self.notes]
        status = "FAIL" if self.exit_code else "PASS"
        lines.append(
            f"\n**{status}**: {len(self.rows)} rows compared: {len(self.failing)} failing, {len(changed)} changed "
            f"within the rules; {len(self.broken)} newly failing."
        )
        return "\n".join(lines) + "\n"


def gate_runs(base_dir: str | Path, new_dir: str | Path) -> CountersGate:
    try:
        base_meta, base = load_run(base_dir)
        new_meta, new = load_run(new_dir)
    except ValueError as exc:
        raise CompareInputError(str(exc)) from None
    gate = gate_frames(base, new)
    devices = [m.get("device") for m in (base_meta, new_meta)]
    if devices[0] != devices[1]:
        gate.notes.append(
            f"BASE ran on {devices[0]}, NEW on {devices[1]}: blocking host-device copies count as host_syncs only on "
            "CUDA, and an implementation may take another code path per device; compare runs of one device type."
        )
    return gate


def gate_frames(base: pd.DataFrame, new: pd.DataFrame) -> CountersGate:
    """Check every (point, implementation) that is ok in both runs; raises CompareInputError when none has counters."""
    b_index, n_index = _match(base, new)
    common = [k for k in b_index if k in n_index]
    gate = CountersGate(unmatched=(len(b_index) - len(common), len(n_index) - len(common)))
    uncounted = [0, 0]
    for key in common:
        b, n = base.loc[b_index[key]], new.loc[n_index[key]]
        if b["status"] != "ok" or n["status"] != "ok":
            if b["status"] == "ok" and n["status"] in BROKEN:
                gate.broken.append((_label(n), n["impl"], n["status"], n["error"] or "-"))
            continue
        has = [_counted(b), _counted(n)]
        uncounted = [u + (not h) for u, h in zip(uncounted, has)]
        if all(has):
            gate.rows.append(_check(b, n))
    gate.uncounted = (uncounted[0], uncounted[1])
    if not gate.rows and not gate.broken:
        which = " and ".join(name for name, u in zip(("BASE", "NEW"), uncounted) if u) or "BASE or NEW"
        raise CompareInputError(
            f"expected rows with counters ({', '.join(COUNTERS)}) in both runs, found none in {which}: "
            "record both runs with a moe-bench that counts them"
        )
    return gate


def _counted(row) -> bool:
    return all(pd.notna(row[c]) for c in COUNTERS)


def _check(b, n) -> RowCheck:
    # the loader reads numbers as float64: exact for counts below 2**53 (9e15)
    changes = []
    for counter, rule in RULES.items():
        if pd.isna(b.get(counter)) or pd.isna(n.get(counter)):
            continue
        base, new = int(b[counter]), int(n[counter])
        if base != new:
            changes.append(Change(counter, base, new, rule(base, new)))
    return RowCheck(_label(n), n["impl"], tuple(changes))
