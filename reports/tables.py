"""The report's tables as rows of text: winners per point, each MoE implementation vs both dense baselines,
and every point that did not produce a timing, with its reason.

Winners are chosen among MoE implementations only: the dense baselines compute a different function, so they
are references (see the vs-dense table), not contestants.
"""

from __future__ import annotations

import pandas as pd

from reports.facets import Group, fmt_value, prefer_routing
from reports.load import samples_of
from reports.stats import mann_whitney_u

ALPHA = 0.01


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


def _points(group: Group) -> pd.DataFrame:
    moe = group.ok[group.ok["family"] == "moe"]
    return moe.sort_values(["routing", "tokens", "latency_ms_median"], na_position="last")


def _ranked(group: Group):
    """(routing, tokens, the point's timed MoE rows fastest first) for every point with a timing."""
    for (routing, tokens), pts in _points(group).groupby(["routing", "tokens"], dropna=False, sort=True):
        pts = pts[pts["latency_ms_median"].notna()].sort_values("latency_ms_median")
        if len(pts):
            yield routing, tokens, pts


def dense_reference(group: Group, impl: str, tokens: float, routing: str | None):
    """The ok dense row `impl` at `tokens`, preferring the same routing (dense layers ignore routing)."""
    rows = group.ok[(group.ok["impl"] == impl) & (group.ok["tokens"] == tokens)]
    rows = prefer_routing(rows, routing)
    return rows.iloc[0] if len(rows) else None


def winners(group: Group) -> tuple[list[str], list[list[str]]]:
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
    rows = []
    for routing, tokens, pts in _ranked(group):
        best = pts.iloc[0]
        flop = dense_reference(group, "flop_matched", tokens, routing)
        eff = fmt_ratio(flop["latency_ms_median"] / best["latency_ms_median"]) if flop is not None else "-"
        if len(pts) > 1:
            second = pts.iloc[1]
            margin = second["latency_ms_median"] / best["latency_ms_median"] - 1
            _, p = mann_whitney_u(samples_of(best), samples_of(second))
            tail = [second["impl"], fmt_ms(second["latency_ms_median"]), f"{margin:+.1%}", f"{p:.2g}"]
            if p >= ALPHA:
                tail[2] += " (n.s.)"
        else:
            tail = ["-", "-", "-", "-"]
        rows.append(
            [fmt_value(tokens), fmt_value(routing), best["impl"], fmt_ms(best["latency_ms_median"]), *tail, eff]
        )
    return headers, rows


PEER_PREFIX = "hf_"
SAME_WITHIN = 0.05


def versus_peers(group: Group) -> tuple[list[str], list[list[str]]]:
    """Our fastest implementation against the fastest transformers one (`hf_*`) at each point."""
    headers = ["tokens", "routing", "ours", "median", "transformers", "median", "ours / theirs", "MWU p", "verdict"]
    rows = []
    for routing, tokens, pts in _ranked(group):
        peer = pts["impl"].str.startswith(PEER_PREFIX)
        if not peer.any() or peer.all():
            continue
        ours, theirs = pts[~peer].iloc[0], pts[peer].iloc[0]
        ratio = ours["latency_ms_median"] / theirs["latency_ms_median"]
        _, p = mann_whitney_u(samples_of(ours), samples_of(theirs))
        if abs(ratio - 1) <= SAME_WITHIN:
            verdict = f"within {SAME_WITHIN:.0%}"
        else:
            verdict = ("faster" if ratio < 1 else "slower") + ("" if p < ALPHA else " (n.s.)")
        rows.append(
            [
                fmt_value(tokens),
                fmt_value(routing),
                ours["impl"],
                fmt_ms(ours["latency_ms_median"]),
                theirs["impl"],
                fmt_ms(theirs["latency_ms_median"]),
                f"{ratio:.3g}",
                f"{p:.2g}",
                verdict,
            ]
        )
    return headers, rows


def versus_dense(group: Group) -> tuple[list[str], list[list[str]]]:
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
    rows = []
    for _, r in _points(group).iterrows():
        flop = dense_reference(group, "flop_matched", r["tokens"], r["routing"])
        param = dense_reference(group, "param_matched", r["tokens"], r["routing"])
        med = r["latency_ms_median"]
        rows.append(
            [
                fmt_value(r["tokens"]),
                fmt_value(r["routing"]),
                r["impl"],
                fmt_ms(med),
                fmt_ms(_get(flop, "latency_ms_median")),
                fmt_ratio(_div(_get(flop, "latency_ms_median"), med)),
                fmt_ms(_get(param, "latency_ms_median")),
                fmt_ratio(_div(_get(param, "latency_ms_median"), med)),
                fmt_bytes(r["peak_mem_bytes"]),
                fmt_ratio(_div(r["peak_mem_bytes"], _get(param, "peak_mem_bytes"))),
            ]
        )
    return headers, rows


def _get(row, col):
    return None if row is None else row[col]


def _div(a, b):
    return a / b if a is not None and b is not None and pd.notna(a) and pd.notna(b) and b else None


def problems(df: pd.DataFrame, labels: dict[int, str]) -> tuple[list[str], list[list[str]]]:
    """Every row whose status is not ok, with its group label and one-line reason; nothing is filtered out."""
    headers = ["status", "group", "tokens", "routing", "impl", "reason"]
    bad = df[df["status"] != "ok"].sort_values(["status", "impl", "tokens"], na_position="last")
    rows = [
        [
            r["status"],
            labels.get(i, "-"),
            fmt_value(r["tokens"]),
            fmt_value(r["routing"]),
            r["impl"],
            r["error"] or "(no reason recorded)",
        ]
        for i, r in bad.iterrows()
    ]
    return headers, rows
