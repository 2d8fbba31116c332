"""The report's tables as rows of text: winners per point, each MoE implementation vs both dense baselines,
and every point that did not produce a timing, with its reason.

Winners are chosen among MoE implementations only: the dense baselines compute a different function, so they
are references (see the vs-dense table), not contestants. No verdict is drawn from a point timed on a disturbed
machine: its values carry a marker and its verdict cell says so.

Each table is built for every group at once, with joins and batched tests over the whole run, then split by
the `group` column (facets.group_index): a filter of the run per row or per group takes minutes at 200k rows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from reports.disturbed import DISTURBED, NO_VERDICT
from reports.facets import fmt_value
from reports.load import samples_column
from reports.match import first_match
from reports.stats import mann_whitney_p

ALPHA = 0.01
GROUP = "group"
POINT = [GROUP, "routing", "tokens"]  # a point within the run
DENSE_COLUMNS = ["latency_ms_median", "peak_mem_bytes", "point_disturbed"]
Rows = dict[int, list[list[str]]]  # group index -> the table's rows for that group


def fmt_ms(ms) -> str:
    """Latency with an automatic unit: µs below 1 ms, s above 1000 ms."""
    if ms is None or pd.isna(ms):
        return "-"
    if ms < 1:
        return f"{ms * 1e3:.3g} µs"
    if ms < 1e3:
        return f"{ms:.4g} ms"
    return f"{ms / 1e3:.4g} s"


def fmt_ratio(x) -> str:
    return "-" if x is None or pd.isna(x) else f"{x:.3g}x"


def fmt_bytes(n) -> str:
    if n is None or pd.isna(n):
        return "-"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


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


def _marked(text: str, flag) -> str:
    return f"{text} {DISTURBED}" if disturbed(flag) and text != "-" else text


def _columns(frame: pd.DataFrame, cols: list[str]) -> list[list]:
    return [frame[c].tolist() for c in cols]


def winners(df: pd.DataFrame) -> tuple[list[str], Rows]:
    headers = [
        "tokens",
        "routing",
        "winner",
        "median",
        "runner-up",
        "median",
        "margin",
        "MWU p",
        "winner vs flop_matched",
    ]
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
    out: Rows = {}
    cols = _columns(best, [GROUP, "tokens", "routing", "impl", "latency_ms_median", "point_disturbed"])
    for (g, tokens, routing, impl, med, mark), s_impl, s_med, f_med, f_mark, h, pv in zip(
        zip(*cols),
        *_columns(second, ["impl", "latency_ms_median"]),
        *_columns(flop, ["latency_ms_median", "point_disturbed"]),
        has,
        p,
    ):
        head = [fmt_value(tokens), fmt_value(routing)]
        if disturbed(mark):
            out.setdefault(g, []).append([*head, NO_VERDICT, *["-"] * 6])
            continue
        tail = ["-", "-", "-", "-"]
        if h:
            margin = f"{s_med / med - 1:+.1%}" + (" (n.s.)" if pv >= ALPHA else "")
            tail = [s_impl, fmt_ms(s_med), margin, f"{pv:.2g}"]
        eff = NO_VERDICT if disturbed(f_mark) else fmt_ratio(_div(f_med, med))
        out.setdefault(g, []).append([*head, impl, fmt_ms(med), *tail, eff])
    return headers, out


PEER_PREFIX = "hf_"
SAME_WITHIN = 0.05


def versus_peers(df: pd.DataFrame) -> tuple[list[str], Rows]:
    """Our fastest implementation against the fastest transformers one (`hf_*`) at each point."""
    headers = ["tokens", "routing", "ours", "median", "transformers", "median", "ours / theirs", "MWU p", "verdict"]
    ranked = _ranked(df)
    peer = ranked["impl"].str.startswith(PEER_PREFIX).to_numpy(dtype=bool)
    ours, theirs = (r.drop_duplicates(POINT) for r in (ranked[~peer], ranked[peer]))  # fastest first per point
    sides = ["impl", "latency_ms_median", "samples_ms"]
    both = ours.merge(theirs[[*POINT, *sides]], on=POINT, suffixes=("", "_theirs"))
    theirs = both[[f"{c}_theirs" for c in sides]].set_axis(sides, axis=1)
    p = mann_whitney_p(samples_column(both), samples_column(theirs))
    out: Rows = {}
    cols = _columns(both, [GROUP, "tokens", "routing", "impl", "latency_ms_median", "point_disturbed"])
    for (g, tokens, routing, impl, med, mark), t_impl, t_med, pv in zip(zip(*cols), *_columns(theirs, sides[:2]), p):
        ratio = med / t_med
        if disturbed(mark):
            verdict, shown = NO_VERDICT, ["-", "-"]
        elif abs(ratio - 1) <= SAME_WITHIN:
            verdict, shown = f"within {SAME_WITHIN:.0%}", [f"{ratio:.3g}", f"{pv:.2g}"]
        else:
            verdict = ("faster" if ratio < 1 else "slower") + ("" if pv < ALPHA else " (n.s.)")
            shown = [f"{ratio:.3g}", f"{pv:.2g}"]
        mine, theirs_ms = _marked(fmt_ms(med), mark), _marked(fmt_ms(t_med), mark)
        row = [fmt_value(tokens), fmt_value(routing), impl, mine, t_impl, theirs_ms, *shown, verdict]
        out.setdefault(g, []).append(row)
    return headers, out


def versus_dense(df: pd.DataFrame) -> tuple[list[str], Rows]:
    headers = [
        "tokens",
        "routing",
        "impl",
        "median",
        "flop_matched",
        "efficiency (flop/impl)",
        "param_matched",
        "speed-up vs param",
        "peak mem",
        "mem vs param",
    ]
    points = _points(df)
    flop, param = (dense_references(points, df, impl) for impl in ("flop_matched", "param_matched"))
    out: Rows = {}
    cols = _columns(points, [GROUP, "tokens", "routing", "impl", "latency_ms_median", "point_disturbed"])
    for (g, tokens, routing, impl, med, mark, mem), (f_med, _, f_mark), (q_med, q_mem, q_mark) in zip(
        zip(*cols, points["peak_mem_bytes"].tolist()),
        zip(*_columns(flop, DENSE_COLUMNS)),
        zip(*_columns(param, DENSE_COLUMNS)),
    ):
        mine = disturbed(mark)
        out.setdefault(g, []).append(
            [
                fmt_value(tokens),
                fmt_value(routing),
                impl,
                _marked(fmt_ms(med), mine),
                _marked(fmt_ms(f_med), f_mark),
                _versus(f_med, f_mark, med, mine),
                _marked(fmt_ms(q_med), q_mark),
                _versus(q_med, q_mark, med, mine),
                fmt_bytes(mem),
                fmt_ratio(_div(mem, q_mem)),
            ]
        )
    return headers, out


def _versus(dense_ms, dense_mark, median: float, mine: bool) -> str:
    """dense median / MoE median, unless either was timed on a disturbed machine."""
    if mine or disturbed(dense_mark):
        return NO_VERDICT
    return fmt_ratio(_div(dense_ms, median))


def _div(a, b):
    return a / b if a is not None and b is not None and pd.notna(a) and pd.notna(b) and b else None


def problems(df: pd.DataFrame, labels: dict[int, str]) -> tuple[list[str], list[list[str]]]:
    """Every row whose status is not ok, with its group label and one-line reason; nothing is filtered out."""
    headers = ["status", "group", "tokens", "routing", "impl", "reason"]
    bad = df[df["status"] != "ok"].sort_values(["status", "impl", "tokens"], na_position="last", kind="stable")
    rows = [
        [status, labels.get(i, "-"), fmt_value(tokens), fmt_value(routing), impl, error or "(no reason recorded)"]
        for i, status, tokens, routing, impl, error in zip(
            bad.index, bad["status"], bad["tokens"], bad["routing"], bad["impl"], bad["error"]
        )
    ]
    return headers, rows
