"""`moe-bench compare BASE NEW`: a verdict per (point, implementation) from the raw samples of two runs.

A point is `slower` (or `faster`) only when a significance test rejects "no change" at `alpha` AND the median
changed by more than the threshold; it is `same` when the 95% bootstrap interval of the change lies inside the
threshold; anything else is `ambiguous` (too noisy to tell), which never fails CI. Noise is not a regression.

metric latency: change = median(new samples) / median(base samples); test: Mann-Whitney U.
metric ratio: each row's median over the flop_matched dense median at the same point of the same run, so a
uniformly faster or slower machine cancels out; test: bootstrap (resampling within each run) of the change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from reports.facets import GROUP_COLUMNS, POINT_COLUMNS, fmt_value, group_label, prefer_routing
from reports.load import load_run, samples_of
from reports.stats import bootstrap_medians, bootstrap_p, interval, mann_whitney_u
from reports.tables import fmt_ms

METRICS = ("latency", "ratio")
VERDICTS = ("slower", "ambiguous", "faster", "same")
BROKEN = ("wrong", "oom", "error")
MIN_SAMPLES = 5
REFERENCE = "flop_matched"


class CompareInputError(ValueError):
    """Inputs that cannot be compared (exit 2); the message is one line."""


@dataclass(frozen=True)
class PointVerdict:
    point: str
    impl: str
    base: float
    new: float
    change: float
    ci: tuple[float, float]
    p: float
    verdict: str
    note: str = ""


@dataclass
class Comparison:
    metric: str
    threshold: float
    alpha: float
    points: list[PointVerdict] = field(default_factory=list)
    broken: list[tuple[str, str, str, str]] = field(default_factory=list)
    unmatched: tuple[int, int] = (0, 0)
    notes: list[str] = field(default_factory=list)

    def count(self, verdict: str) -> int:
        return sum(p.verdict == verdict for p in self.points)

    @property
    def exit_code(self) -> int:
        return 1 if self.count("slower") or self.broken else 0

    def markdown(self) -> str:
        unit = "ms" if self.metric == "latency" else f"x {REFERENCE}"
        lines = [
            f"### moe-bench compare (metric {self.metric}, threshold {self.threshold:.1%}, alpha {self.alpha:g})",
            "",
            "| point | impl | base | new | change | 95% CI | p | verdict |",
            "|---|---|---|---|---|---|---|---|",
        ]
        order = {v: i for i, v in enumerate(VERDICTS)}
        for p in sorted(self.points, key=lambda p: (order[p.verdict], -p.change)):
            base, new = (
                (fmt_ms(p.base), fmt_ms(p.new)) if self.metric == "latency" else (f"{p.base:.4g}", f"{p.new:.4g}")
            )
            verdict = f"**{p.verdict}**" if p.verdict == "slower" else p.verdict
            if p.note:
                verdict += f" ({p.note})"
            ci = f"{p.ci[0]:.3f}-{p.ci[1]:.3f}" if np.isfinite(p.ci[0]) else "-"
            lines.append(f"| {p.point} | {p.impl} | {base} | {new} | {p.change:.3f}x | {ci} | {p.p:.2g} | {verdict} |")
        lines.append("")
        lines.append(f"base and new are medians in {unit}; change = new / base.")
        if self.broken:
            lines += [
                "",
                "Points that were ok in BASE and fail in NEW:",
                "",
                "| point | impl | status | reason |",
                "|---|---|---|---|",
            ]
            lines += [f"| {pt} | {impl} | {st} | {why} |" for pt, impl, st, why in self.broken]
        only_base, only_new = self.unmatched
        if only_base or only_new:
            lines.append(f"\nNot matched: {only_base} rows only in BASE, {only_new} only in NEW.")
        lines += [f"\nNote: {n}" for n in self.notes]
        counts = ", ".join(f"{self.count(v)} {v}" for v in VERDICTS)
        status = "FAIL" if self.exit_code else "PASS"
        lines.append(f"\n**{status}**: {len(self.points)} compared: {counts}; {len(self.broken)} newly failing.")
        return "\n".join(lines) + "\n"


def parse_threshold(text: str | float) -> float:
    """'5%', '5' and '0.05' all mean 5%: values above 1 are percentages."""
    raw = str(text).strip()
    try:
        value = float(raw.rstrip("%"))
    except ValueError:
        raise CompareInputError(f"expected a threshold such as 5% or 0.05, got {raw!r}") from None
    if raw.endswith("%") or value > 1:
        value /= 100
    if not 0 < value < 10:
        raise CompareInputError(f"expected a positive threshold, got {raw!r}")
    return value


def compare_runs(base_dir, new_dir, threshold: float = 0.05, metric: str = "latency", **kw) -> Comparison:
    try:
        base_meta, base = load_run(base_dir)
        new_meta, new = load_run(new_dir)
    except ValueError as exc:
        raise CompareInputError(str(exc)) from None
    comparison = compare_frames(base, new, threshold, metric, **kw)
    devices = [m.get("device_name") or m.get("device") for m in (base_meta, new_meta)]
    if metric == "latency" and devices[0] != devices[1]:
        comparison.notes.append(
            f"BASE ran on {devices[0]}, NEW on {devices[1]}: latencies across machines differ; use --metric ratio."
        )
    return comparison


def _keys(df: pd.DataFrame, by_id: bool) -> list[tuple]:
    if by_id:
        return list(zip(df["point_id"], df["impl"]))
    cols = [*POINT_COLUMNS, "impl"]
    return [tuple(fmt_value(v) for v in row) for row in df[cols].itertuples(index=False)]


def _match(base: pd.DataFrame, new: pd.DataFrame) -> tuple[dict, dict]:
    """Index both runs by (point_id, impl), or by the point's parameters when point ids do not meet."""
    for by_id in (True, False):
        if by_id and (base["point_id"].isna().any() or new["point_id"].isna().any()):
            continue
        b = dict(zip(_keys(base, by_id), base.index))
        n = dict(zip(_keys(new, by_id), new.index))
        if set(b) & set(n):
            return b, n
    raise CompareInputError("expected BASE and NEW to share points, found no common (point, implementation)")


def _label(row) -> str:
    key = {c: row[c] for c in GROUP_COLUMNS}
    return f"{group_label(key)} · T={fmt_value(row['tokens'])} {fmt_value(row['routing'])}"


def _reference(df: pd.DataFrame, row) -> pd.Series | None:
    """The flop_matched row at the same point of the same run: same point_id, else same shape and tokens."""
    dense = df[(df["impl"] == REFERENCE) & (df["status"] == "ok")]
    same = dense[dense["point_id"] == row["point_id"]] if pd.notna(row["point_id"]) else dense.iloc[:0]
    if not len(same):
        mask = dense["tokens"] == row["tokens"]
        for c in GROUP_COLUMNS:
            mask &= (dense[c] == row[c]) | (dense[c].isna() & pd.isna(row[c]))
        same = prefer_routing(dense[mask], row["routing"])
    return same.iloc[0] if len(same) else None


def compare_frames(
    base: pd.DataFrame,
    new: pd.DataFrame,
    threshold: float = 0.05,
    metric: str = "latency",
    alpha: float = 0.01,
    n_boot: int = 1000,
    seed: int = 0,
) -> Comparison:
    if metric not in METRICS:
        raise CompareInputError(f"expected --metric one of {', '.join(METRICS)}, got {metric!r}")
    b_index, n_index = _match(base, new)
    result = Comparison(metric, threshold, alpha)
    rng = np.random.default_rng(seed)
    common = [k for k in b_index if k in n_index]
    result.unmatched = (len(b_index) - len(common), len(n_index) - len(common))
    for key in common:
        b, n = base.loc[b_index[key]], new.loc[n_index[key]]
        if b["status"] != "ok" or n["status"] != "ok":
            if b["status"] == "ok" and n["status"] in BROKEN:
                result.broken.append((_label(n), n["impl"], n["status"], n["error"] or "-"))
            continue
        if metric == "ratio":
            if n["impl"] == REFERENCE:
                continue
            refs = (_reference(base, b), _reference(new, n))
            if refs[0] is None or refs[1] is None:
                result.notes.append(f"{_label(n)} {n['impl']}: no {REFERENCE} reference in both runs, not compared")
                continue
            result.points.append(_ratio_verdict(b, n, *refs, threshold, alpha, n_boot, rng))
        else:
            result.points.append(_latency_verdict(b, n, threshold, alpha, n_boot, rng))
    if not result.points and not result.broken:
        raise CompareInputError("expected at least one point that succeeded in both BASE and NEW, found none")
    return result


def _verdict(change: float, ci: tuple[float, float], p: float, threshold: float, alpha: float) -> str:
    hi, lo = 1 + threshold, 1 / (1 + threshold)
    if p < alpha and change > hi:
        return "slower"
    if p < alpha and change < lo:
        return "faster"
    if lo <= ci[0] and ci[1] <= hi:
        return "same"
    return "ambiguous"


def _latency_verdict(b, n, threshold, alpha, n_boot, rng) -> PointVerdict:
    x, y = samples_of(b), samples_of(n)

    def test() -> tuple[tuple[float, float], float]:
        ratios = bootstrap_medians(y, n_boot, rng) / bootstrap_medians(x, n_boot, rng)
        return interval(ratios), mann_whitney_u(x, y)[1]

    return _point(n, float(np.median(x)), float(np.median(y)), (x, y), test, threshold, alpha)


def _ratio_verdict(b, n, b_ref, n_ref, threshold, alpha, n_boot, rng) -> PointVerdict:
    sets = [samples_of(r) for r in (b, b_ref, n, n_ref)]

    def test() -> tuple[tuple[float, float], float]:
        m = [bootstrap_medians(s, n_boot, rng) for s in sets]
        ratios = (m[2] / m[3]) / (m[0] / m[1])
        return interval(ratios), bootstrap_p(ratios)

    base_ratio = float(np.median(sets[0]) / np.median(sets[1]))
    new_ratio = float(np.median(sets[2]) / np.median(sets[3]))
    return _point(n, base_ratio, new_ratio, sets, test, threshold, alpha)


def _point(n, base: float, new: float, sets, test, threshold: float, alpha: float) -> PointVerdict:
    """Run `test` -> (95% CI of the change, p) unless a sample set is too small to test at all."""
    change = new / base
    if min(len(s) for s in sets) < MIN_SAMPLES:
        nan = (float("nan"), float("nan"))
        note = f"fewer than {MIN_SAMPLES} samples"
        return PointVerdict(_label(n), n["impl"], base, new, change, nan, 1.0, "ambiguous", note)
    ci, p = test()
    return PointVerdict(_label(n), n["impl"], base, new, change, ci, p, _verdict(change, ci, p, threshold, alpha))
