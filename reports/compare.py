"""`moe-bench compare BASE NEW`: a verdict per (point, implementation) from the raw samples of two runs.

A point is `slower` (or `faster`) only when a significance test rejects "no change" at `alpha` AND the median
changed by more than the threshold; it is `same` when the 95% bootstrap interval of the change lies inside the
threshold; anything else is `ambiguous` (too noisy to tell), which never fails CI. Noise is not a regression.

metric latency: change = median(new samples) / median(base samples); test: Mann-Whitney U.
metric ratio: each row's median over the reference row's median (flop_matched, the dense FFN of equal FLOPs,
unless `reference` names another row, e.g. transformers' hf_grouped_mm) at the same point of the same run, so a
uniformly faster or slower machine cancels out; test: bootstrap (resampling within each run) of the change.

A point timed on a disturbed machine in BASE or NEW is `ambiguous`, with the reason, whatever its numbers say
(exit 1 under --strict). With `confirm`, a second run of the code under test, the verdict is the two runs'
agreement: a row is `slower` when its numbers say slower against BASE in both runs, disturbed or not (a regression
reproduces; a neighbour on a shared host rarely slows the same row against its reference twice), and a slower row
that the second run does not repeat is `ambiguous`. A row of BASE that NEW lacks fails: a lost point is no pass.
Rows only in NEW are listed. Every test runs batched over the rows of equal sample counts, so 200k rows are judged in seconds.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path

import numpy as np
import pandas as pd

from reports.cells import fmt_value
from reports.disturbed import reasons_by_point
from reports.facets import GROUP_COLUMNS, POINT_COLUMNS, group_label, point_key, row_group_labels
from reports.load import load_run, paused_gc, samples_column
from reports.match import first_match
from reports.stats import bootstrap_medians, bootstrap_p, by_sizes, chunks, interval, mann_whitney_u

METRICS = ("latency", "ratio")
VERDICTS = ("slower", "ambiguous", "faster", "same")
BROKEN = ("wrong", "oom", "error", "timeout")
MIN_SAMPLES = 5
REFERENCE = "flop_matched"
MAX_LISTED = 50  # rows listed per table of unmatched rows; the rest are counted
# What a verdict reads; a run's other columns are not loaded (half the time and memory of a 200k-row run).
COLUMNS = (*POINT_COLUMNS, "point_id", "impl", "family", "status", "error", "samples_ms", "latency_ms_median")
COLUMNS += ("disturbed", "disturbance")
PARALLEL_BYTES = 32 * 2**20  # a NEW results file larger than this is read beside BASE, in a second process


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
    disturbed: bool = False
    measured: str = ""  # what the numbers alone say (a disturbed point's verdict is ambiguous whatever they say)


@dataclass
class Comparison:
    metric: str
    threshold: float
    alpha: float
    points: list[PointVerdict] = field(default_factory=list)
    broken: list[tuple[str, str, str, str]] = field(default_factory=list)
    only_base: list[tuple[str, str, str]] = field(default_factory=list)  # (point, impl, status in BASE)
    only_new: list[tuple[str, str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    strict: bool = False
    reference: str = REFERENCE  # metric ratio: the row every median is divided by

    def verdict(self, change: float, ci: tuple[float, float], p: float) -> str:
        """slower/faster: significant at alpha and beyond the threshold; same: the CI inside it; else ambiguous."""
        hi, lo = 1 + self.threshold, 1 / (1 + self.threshold)
        if p < self.alpha and change > hi:
            return "slower"
        if p < self.alpha and change < lo:
            return "faster"
        if lo <= ci[0] and ci[1] <= hi:
            return "same"
        return "ambiguous"

    def count(self, verdict: str) -> int:
        return sum(p.verdict == verdict for p in self.points)

    @property
    def disturbed(self) -> int:
        return sum(p.disturbed for p in self.points)

    @property
    def exit_code(self) -> int:
        lost = self.count("slower") or self.broken or self.only_base
        return 1 if lost or (self.strict and self.disturbed) else 0

    def markdown(self) -> str:
        from reports.compare_text import comparison_markdown

        return comparison_markdown(self)


def compare_runs(base_dir, new_dir, confirm_dir=None, **options) -> Comparison:
    """Both runs read and judged, by their agreement with `confirm_dir` where given (see `confirmed`); `options`
    are compare_frames' (threshold, metric, alpha, n_boot, seed, strict, reference, only)."""
    try:
        (base_meta, base), (new_meta, new) = _load_both(Path(base_dir), Path(new_dir))
        again = load_run(Path(confirm_dir), COLUMNS)[1] if confirm_dir is not None else None
    except ValueError as exc:
        raise CompareInputError(str(exc)) from None
    with paused_gc():
        comparison = compare_frames(base, new, **options)
        if again is not None:
            confirmed(comparison, compare_frames(base, again, **options))
    devices = [m.get("device_name") or m.get("device") for m in (base_meta, new_meta)]
    if comparison.metric == "latency" and devices[0] != devices[1]:
        comparison.notes.append(
            f"BASE ran on {devices[0]}, NEW on {devices[1]}: latencies across machines differ; use --metric ratio."
        )
    return comparison


def confirmed(comparison: Comparison, again: Comparison) -> None:
    """Each row of `comparison` whose numbers say slower is `slower` when `again` (BASE against a second run of the
    same code) says so too, even where the canary flagged either run, else `ambiguous` with that run's change."""
    seen = {(p.point, p.impl): p for p in again.points}
    for i, p in enumerate(comparison.points):
        if p.measured != "slower":
            continue
        other = seen.get((p.point, p.impl))
        if other is not None and other.measured == "slower":
            verdict, why = "slower", f"slower in the confirming run too: {other.change:.3f}x"
        else:
            there = f"{other.change:.3f}x, {other.measured}" if other else "not compared there"
            verdict, why = "ambiguous", f"not reproduced in the confirming run: {there}"
        comparison.points[i] = replace(p, verdict=verdict, note="; ".join(n for n in (p.note, why) if n))
    slower_there = sum(p.measured == "slower" for p in again.points)
    comparison.notes.append(f"judged with a confirming run of the same code, where {slower_there} rows measured slower")


def _load_both(base_dir: Path, new_dir: Path) -> tuple[tuple[dict, pd.DataFrame], tuple[dict, pd.DataFrame]]:
    """Both runs; a large NEW is read in a forked process while this one reads BASE (reading is most of a
    compare). The worker only parses JSON into a frame; errors come back as the same one-line exceptions."""
    results = new_dir / "results.jsonl"
    if results.is_file() and results.stat().st_size > PARALLEL_BYTES and "fork" in get_all_start_methods():
        with ProcessPoolExecutor(1, mp_context=get_context("fork")) as pool:
            new = pool.submit(load_run, new_dir, COLUMNS)
            return load_run(base_dir, COLUMNS), new.result()
    return load_run(base_dir, COLUMNS), load_run(new_dir, COLUMNS)


def _keys(df: pd.DataFrame, by_id: bool) -> list[tuple]:
    if by_id:
        return list(zip(df["point_id"].tolist(), df["impl"].tolist()))
    cols = [*POINT_COLUMNS, "impl"]
    return [tuple(fmt_value(v) for v in row) for row in zip(*(df[c].tolist() for c in cols))]


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
    return _point_text(group_label({c: row[c] for c in GROUP_COLUMNS}), row["tokens"], row["routing"])


def _point_text(group: str, tokens, routing) -> str:
    return f"{group} · T={fmt_value(tokens)} {fmt_value(routing)}"


def _labels(df: pd.DataFrame) -> pd.Series:
    """`_label` of every row, with one group label computed per group."""
    texts = [_point_text(*v) for v in zip(row_group_labels(df), df["tokens"], df["routing"])]
    return pd.Series(texts, index=df.index, dtype=object)


def _references(df: pd.DataFrame, rows: pd.DataFrame, reference: str) -> pd.DataFrame:
    """For each of `rows`, the ok `reference` row at the same point of `df`: same point_id, else same group
    and tokens (the same routing first). Columns impl (null where none), samples_ms, latency_ms_median,
    point_disturbed and the reference's point key."""
    dense = df[(df["impl"] == reference) & (df["status"] == "ok")]
    dense = dense.assign(key=point_key(df)[dense.index], point_id=dense["point_id"].fillna("\0 no id"))
    left = rows.assign(point_id=rows["point_id"].fillna("\0 without an id"))  # rows without ids never meet
    group = [*GROUP_COLUMNS, "tokens"]
    cols = ["impl", "samples_ms", "latency_ms_median", "point_disturbed", "key"]
    return first_match(left, dense, [["point_id"], [*group, "routing"], group], cols)


def compare_frames(
    base: pd.DataFrame,
    new: pd.DataFrame,
    *,
    threshold: float = 0.05,
    metric: str = "latency",
    alpha: float = 0.01,
    n_boot: int = 1000,
    seed: int = 0,
    strict: bool = False,
    reference: str = REFERENCE,
    only: tuple[str, ...] = (),
) -> Comparison:
    base, new = _selected(Pair(base, new), metric, reference, only)
    b_index, n_index = _match(base, new)
    result = Comparison(metric, threshold, alpha, strict=strict, reference=reference)
    common = [k for k in b_index if k in n_index]
    b_labels, n_labels = _labels(base), _labels(new)
    result.only_base = _listing(base, b_labels, [i for k, i in b_index.items() if k not in n_index])
    result.only_new = _listing(new, n_labels, [i for k, i in n_index.items() if k not in b_index])
    b, n = base.loc[[b_index[k] for k in common]], new.loc[[n_index[k] for k in common]]
    b_ok, n_ok = (b["status"] == "ok").to_numpy(), (n["status"] == "ok").to_numpy()
    lost = n[b_ok & n["status"].isin(BROKEN).to_numpy()]
    result.broken = [
        (n_labels[i], impl, status, error or "-")
        for i, impl, status, error in zip(lost.index, lost["impl"], lost["status"], lost["error"])
    ]
    b, n = b[b_ok & n_ok], n[b_ok & n_ok]
    sets = _ratio_sets(Pair(base, new), Pair(b, n), n_labels, result) if metric == "ratio" else [b, n]
    b, n = sets[0], sets[len(sets) // 2]  # the compared rows; ratio sets hold their references beside them
    medians, ci, p, tested = _judge([samples_column(f) for f in sets], n_boot, np.random.default_rng(seed))
    base_value, new_value = _sides(medians)
    refs = (sets[1], sets[3]) if metric == "ratio" else (None, None)
    why = [
        " / ".join(w for w in pair if w)
        for pair in zip(_why_disturbed("BASE", base, b, refs[0]), _why_disturbed("NEW", new, n, refs[1]))
    ]
    for i, (label, impl) in enumerate(zip(n_labels[n.index], n["impl"])):
        change = new_value[i] / base_value[i]
        measured = result.verdict(change, ci[i], p[i]) if tested[i] else "ambiguous"
        if why[i]:
            verdict, note = "ambiguous", why[i]
        elif not tested[i]:
            verdict, note = "ambiguous", f"fewer than {MIN_SAMPLES} samples"
        else:
            verdict, note = measured, ""
        point = PointVerdict(
            label, impl, base_value[i], new_value[i], change, ci[i], p[i], verdict, note, bool(why[i]), measured
        )
        result.points.append(point)
    if not result.points and not result.broken:
        raise CompareInputError("expected at least one point that succeeded in both BASE and NEW, found none")
    return result


@dataclass(frozen=True)
class Pair:
    """The BASE and NEW sides of one thing: the two runs, or their compared rows (paired by position)."""

    base: pd.DataFrame
    new: pd.DataFrame


def _selected(runs: Pair, metric: str, reference: str, only: tuple[str, ...]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows compare reads: all, or `only` those (and the ratio's reference, which divides but is not judged);
    a bad metric, a reference NEW lacks or a name in neither run is one line."""
    if metric not in METRICS:
        raise CompareInputError(f"expected --metric one of {', '.join(METRICS)}, got {metric!r}")
    if metric == "ratio" and not (runs.new["impl"] == reference).any():
        raise CompareInputError(f"--reference {reference}: NEW has no {reference} rows to divide by")
    if not only:
        return runs.base, runs.new
    unknown = sorted(set(only) - set(runs.base["impl"]) - set(runs.new["impl"]))
    if unknown:
        raise CompareInputError(f"--only: no rows of {', '.join(unknown)} in BASE or NEW")
    judged = {*only, reference} if metric == "ratio" else set(only)
    return runs.base[runs.base["impl"].isin(judged)], runs.new[runs.new["impl"].isin(judged)]


def _ratio_sets(runs: Pair, rows: Pair, labels: pd.Series, result: Comparison) -> list:
    """[b, b's reference, n, n's reference] over the compared rows (b, n) that have a reference row in both
    runs; the reference rows themselves are not compared. A note counts the rows left out."""
    reference = result.reference
    keep = (rows.new["impl"] != reference).to_numpy()
    b, n = rows.base[keep], rows.new[keep]
    b_ref, n_ref = _references(runs.base, b, reference), _references(runs.new, n, reference)
    has = (b_ref["impl"].notna() & n_ref["impl"].notna()).to_numpy()
    if not has.all():
        first = n.index[~has][0]
        result.notes.append(
            f"{int((~has).sum())} rows have no {reference} reference in both runs and were not compared "
            f"(e.g. {labels[first]} {n.at[first, 'impl']})"
        )
    return [b[has], b_ref[has], n[has], n_ref[has]]


def _listing(df: pd.DataFrame, labels: pd.Series, index: list) -> list[tuple[str, str, str]]:
    return [(labels[i], df.at[i, "impl"], df.at[i, "status"]) for i in index]


def _judge(sets: list[list[np.ndarray]], n_boot: int, rng: np.random.Generator):
    """(medians [sets, P], 95% CI of the change per row, p [P], tested [P]), batched over equal sample counts.

    sets: [base, new] (latency: Mann-Whitney U) or [base, base ref, new, new ref] (ratio: bootstrap p). A row
    with fewer than MIN_SAMPLES samples in any set is not tested: nan interval, p = 1, tested False.
    """
    size = len(sets[0])
    medians = np.full((len(sets), size), np.nan)
    lo, hi, p, tested = np.full(size, np.nan), np.full(size, np.nan), np.ones(size), np.zeros(size, dtype=bool)
    for sizes, index in by_sizes(sets).items():
        for chunk in chunks(index):
            mats = [np.stack([s[i] for i in chunk]) for s in sets]
            medians[:, chunk] = [np.median(m, axis=1) if m.shape[1] else np.nan for m in mats]
            if min(sizes) < MIN_SAMPLES:
                continue
            base, new = _sides([bootstrap_medians(m, n_boot, rng) for m in mats])
            change = new / base
            lo[chunk], hi[chunk] = interval(change)
            p[chunk] = mann_whitney_u(mats[0], mats[1])[1] if len(sets) == 2 else bootstrap_p(change)
            tested[chunk] = True
    return medians, list(zip(lo, hi)), p, tested


def _sides(values):
    """(base, new) of the compared quantity from the medians of each set: latency, or latency / reference."""
    if len(values) == 2:
        return values[0], values[1]
    return values[0] / values[1], values[2] / values[3]


def _why_disturbed(side: str, df: pd.DataFrame, rows: pd.DataFrame, refs: pd.DataFrame | None) -> list[str]:
    """Per row of `rows`: 'disturbed in SIDE: why' when its point or its reference's was disturbed, else ''."""
    reasons = reasons_by_point(df)
    if not reasons:
        return [""] * len(rows)
    keys = point_key(df)[rows.index]
    ref_keys = refs["key"] if refs is not None else [None] * len(rows)
    out = []
    for key, ref_key in zip(keys, ref_keys):
        found = [reasons[k] for k in dict.fromkeys((key, ref_key)) if k in reasons]
        out.append(f"disturbed in {side}: {'; '.join(found)}" if found else "")
    return out
