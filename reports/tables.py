"""The report's tables as rows of typed cells: winners per point, each MoE implementation vs both dense
baselines, and every point that did not produce a timing, with its reason.

Winners are chosen among MoE implementations only: the dense baselines compute a different function, so they
are references (see the vs-dense table), not contestants. No verdict is drawn from a point timed on a disturbed
machine: its values carry a marker and its verdict cell says so.

Each table is built for every group at once, with joins and batched tests over the whole run, then split by
the `group` column (facets.group_index): a filter of the run per row or per group takes minutes at 200k rows.
Numbers stay `cells.Number`s (value, format, note); document.py writes them out.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from reports.cells import Cell, Number, fmt_bytes, fmt_ms, fmt_ratio, fmt_value, number, signed_percent, significant
from reports.disturbed import DISTURBED, NO_VERDICT
from reports.load import samples_column
from reports.match import first_match
from reports.stats import mann_whitney_p

ALPHA = 0.01
GROUP = "group"
POINT = [GROUP, "routing", "tokens"]  # a point within the run
DENSE_COLUMNS = ["latency_ms_median", "peak_mem_bytes", "point_disturbed"]
OWN_COLUMNS = [GROUP, "tokens", "routing", "impl", "latency_ms_median", "point_disturbed"]  # of each table row
Rows = dict[int, list[list[Cell]]]  # group index -> the table's rows for that group


def _points(df: pd.DataFrame) -> pd.DataFrame:
    ok = df[(df["status"] == "ok") & (df["family"] == "moe")]
    return ok.sort_values([*POINT, "latency_ms_median"], na_position="last", kind="stable")


def _ranked(df: pd.DataFrame) -> pd.DataFrame:
    """The timed MoE rows, each point's fastest first, with `rank` (0 = fastest) within its point."""
    pts = _points(df)
    pts = pts[pts["latency_ms_median"].notna()]
    return pts.assign(rank=pts.groupby(POINT, dropna=False, sort=False).cumcount())


def dense_references(rows: pd.DataFrame, df: pd.DataFrame, impl: str) -> pd.DataFrame:
    """For each of `rows` (index kept), DENSE_COLUMNS of the ok dense row `impl` of its group at the same tokens,
    preferring the same routing (dense layers ignore routing, but the runner times them at every point)."""
    dense = df[(df["impl"] == impl) & (df["status"] == "ok")]
    return first_match(rows, dense, [[GROUP, "tokens", "routing"], [GROUP, "tokens"]], DENSE_COLUMNS)


def disturbed(flag) -> bool:
    """A point_disturbed value as a bool: null (no such row) is not disturbed."""
    return isinstance(flag, (bool, np.bool_)) and bool(flag)


def _ms(value, flag=None) -> Cell:
    """A latency cell, marked when its point was timed on a disturbed machine."""
    return number(value, fmt_ms, DISTURBED if disturbed(flag) else "")


def _point(tokens, routing) -> list[Cell]:
    return [number(tokens), fmt_value(routing)]


def _columns(frame: pd.DataFrame, cols: list[str]) -> Iterable[tuple]:
    """`cols` of each row of `frame`, as tuples (a column read once, not a lookup per row)."""
    return zip(*(frame[c].tolist() for c in cols))


def _by_group(frame: pd.DataFrame, rows: Iterable[list[Cell]]) -> Rows:
    """The rows (one per row of `frame`, in order) under the group index of their row."""
    out: Rows = {}
    for g, row in zip(frame[GROUP].tolist(), rows):
        out.setdefault(g, []).append(row)
    return out


def winners(df: pd.DataFrame) -> tuple[list[str], Rows]:
    headers = ["tokens", "routing", "winner", "median", "runner-up", "median", "margin", "MWU p"]
    headers.append("efficiency (flop/winner)")  # as the dense table reads: above 1, the MoE winner is faster
    ranked = _ranked(df)
    best = ranked[ranked["rank"] == 0]
    second = first_match(best, ranked[ranked["rank"] == 1], [POINT], ["impl", "latency_ms_median", "samples_ms"])
    flop = dense_references(best, df, "flop_matched")
    has = second["impl"].notna().to_numpy()
    empty = np.empty(0)
    p = mann_whitney_p(
        [s if h else empty for s, h in zip(samples_column(best), has)],
        [s if h else empty for s, h in zip(samples_column(second), has)],
    )
    runners_up = [pair if h else None for pair, h in zip(_columns(second, ["impl", "latency_ms_median"]), has)]
    rows = map(_winner_row, _columns(best, OWN_COLUMNS), runners_up, _columns(flop, DENSE_COLUMNS), p)
    return headers, _by_group(best, rows)


def _winner_row(own: tuple, runner_up: tuple | None, flop: tuple, p: float) -> list[Cell]:
    """One point's winner (`own`: OWN_COLUMNS), its runner-up (impl, median) if any, and the winner against the
    flop_matched reference (DENSE_COLUMNS)."""
    _, tokens, routing, impl, median, mark = own
    if disturbed(mark):
        return [*_point(tokens, routing), NO_VERDICT, *["-"] * 6]
    tail: list[Cell] = ["-", "-", "-", "-"]
    if runner_up is not None:
        second, second_ms = runner_up
        margin = Number(second_ms / median - 1, signed_percent, "(n.s.)" if p >= ALPHA else "")
        tail = [second, _ms(second_ms), margin, Number(p, significant(2))]
    flop_ms, _, flop_mark = flop
    efficiency = NO_VERDICT if disturbed(flop_mark) else number(_div(flop_ms, median), fmt_ratio)
    return [*_point(tokens, routing), impl, _ms(median), *tail, efficiency]


PEER_PREFIX = "hf_"
OURS_IN_TRANSFORMERS = "moe_bench_"  # our implementations as transformers experts implementations (a model's rows)
SAME_WITHIN = 0.05
REUSED_S = 0.5  # a compiled row's group paid this much more than its own point: it reused an earlier graph


def is_transformers(rows: pd.DataFrame) -> pd.Series:
    """Rows that ran transformers' code: its `hf_*` peers on our layer, or a model block's experts under one of
    transformers' own implementations (eager, grouped_mm, ...) rather than ours (`moe_bench_*`)."""
    impl = rows["impl"].astype(str)
    model_row = rows["model"].notna() if "model" in rows else False
    return impl.str.startswith(PEER_PREFIX) | (model_row & ~impl.str.startswith(OURS_IN_TRANSFORMERS))


def versus_peers(df: pd.DataFrame) -> tuple[list[str], Rows]:
    """Our fastest implementation against the fastest transformers one at each point."""
    headers = ["tokens", "routing", "ours", "median", "transformers", "median", "ours / theirs", "MWU p", "verdict"]
    ranked = _ranked(df)
    peer = is_transformers(ranked).to_numpy(dtype=bool)
    ours, theirs = (r.drop_duplicates(POINT) for r in (ranked[~peer], ranked[peer]))  # fastest first per point
    sides = ["impl", "latency_ms_median", "samples_ms"]
    both = ours.merge(theirs[[*POINT, *sides]], on=POINT, suffixes=("", "_theirs"))
    theirs = both[[f"{c}_theirs" for c in sides]].set_axis(sides, axis=1)
    p = mann_whitney_p(samples_column(both), samples_column(theirs))
    compiles = [[None, None]] * len(both)
    if "compile_s" in both:
        paid = df.groupby([GROUP, "impl"], sort=False)["compile_s"].sum(min_count=1).rename("group_compile_s")
        compiles = _columns(both.join(paid, on=[GROUP, "impl"]), ["compile_s", "group_compile_s"])
    rows = map(_peer_row, _columns(both, OWN_COLUMNS), _columns(theirs, sides[:2]), p, compiles)
    return headers, _by_group(both, rows)


def _peer_row(own: tuple, theirs: tuple, p: float, compiles: tuple) -> list[Cell]:
    """Our fastest at a point (`own`: OWN_COLUMNS) against the fastest transformers one (`theirs`: impl, median);
    a compiled winner says what compiling it cost: at this point, and over the table's points, since a point
    whose graph an earlier token count compiled costs almost nothing itself."""
    _, tokens, routing, impl, median, mark = own
    compile_s, group_compile_s = compiles
    if not pd.isna(compile_s):  # None and NaN: not a compiled row
        impl = f"{impl} (compiled in {compile_s:.3g} s"
        if group_compile_s > compile_s + REUSED_S:
            impl += f" here, {group_compile_s:.3g} s over this table's points"
        impl += ")"
    their_impl, their_ms = theirs
    ratio = median / their_ms
    shown: list[Cell] = [Number(ratio, significant(3)), Number(p, significant(2))]
    if disturbed(mark):
        verdict, shown = NO_VERDICT, ["-", "-"]
    elif abs(ratio - 1) <= SAME_WITHIN:
        verdict = f"within {SAME_WITHIN:.0%}"
    else:
        verdict = ("faster" if ratio < 1 else "slower") + ("" if p < ALPHA else " (n.s.)")
    return [*_point(tokens, routing), impl, _ms(median, mark), their_impl, _ms(their_ms, mark), *shown, verdict]


def versus_dense(df: pd.DataFrame) -> tuple[list[str], Rows]:
    headers = ["tokens", "routing", "impl", "median", "flop_matched", "efficiency (flop/impl)", "param_matched"]
    headers += ["speed-up (param/impl)", "peak mem", "mem (impl/param)"]
    points = _points(df)
    flop, param = (dense_references(points, df, impl) for impl in ("flop_matched", "param_matched"))
    rows = map(
        _dense_row,
        _columns(points, OWN_COLUMNS),
        points["peak_mem_bytes"].tolist(),
        _columns(flop, DENSE_COLUMNS),
        _columns(param, DENSE_COLUMNS),
    )
    return headers, _by_group(points, rows)


def _dense_row(own: tuple, peak_mem, flop: tuple, param: tuple) -> list[Cell]:
    """One MoE row (`own`: OWN_COLUMNS, and its peak memory) against both dense references (DENSE_COLUMNS)."""
    _, tokens, routing, impl, median, mark = own
    flop_ms, _, flop_mark = flop
    param_ms, param_mem, param_mark = param
    mine = disturbed(mark)
    return [
        *_point(tokens, routing),
        impl,
        _ms(median, mine),
        _ms(flop_ms, flop_mark),
        _versus(flop_ms, flop_mark, median, mine),
        _ms(param_ms, param_mark),
        _versus(param_ms, param_mark, median, mine),
        number(peak_mem, fmt_bytes),
        number(_div(peak_mem, param_mem), fmt_ratio),
    ]


def _versus(dense_ms, dense_mark, median: float, mine: bool) -> Cell:
    """dense median / MoE median, unless either was timed on a disturbed machine."""
    if mine or disturbed(dense_mark):
        return NO_VERDICT
    return number(_div(dense_ms, median), fmt_ratio)


def _div(a, b):
    return a / b if a is not None and b is not None and pd.notna(a) and pd.notna(b) and b else None


def problems(df: pd.DataFrame, labels: dict[int, str]) -> tuple[list[str], list[list[Cell]]]:
    """Every row whose status is not ok, with its group label and one-line reason; nothing is filtered out."""
    headers = ["status", "group", "tokens", "routing", "impl", "reason"]
    bad = df[df["status"] != "ok"].sort_values(["status", "impl", "tokens"], na_position="last", kind="stable")
    rows = [
        [status, labels.get(i, "-"), *_point(tokens, routing), impl, error or "(no reason recorded)"]
        for i, status, tokens, routing, impl, error in zip(
            bad.index, bad["status"], bad["tokens"], bad["routing"], bad["impl"], bad["error"]
        )
    ]
    return headers, rows
