"""Statistics on raw latency samples, in numpy only: Mann-Whitney U (normal approximation) and bootstrap medians.

Verdicts in compare.py and the "significant" column of the winner table both use these, so they agree.
"""

from __future__ import annotations

import math

import numpy as np


def rankdata(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average ranks (1-based, ties share their mean rank) and the size of each tie group."""
    values = np.asarray(values, dtype=float)
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.r_[True, ordered[1:] != ordered[:-1]]
    group_of_sorted = np.cumsum(starts) - 1
    bounds = np.r_[np.flatnonzero(starts), len(values)]
    mean_rank = (bounds[:-1] + bounds[1:] + 1) / 2.0
    ranks = np.empty(len(values))
    ranks[order] = mean_rank[group_of_sorted]
    return ranks, np.diff(bounds)


def mann_whitney_u(x, y) -> tuple[float, float]:
    """U statistic of `x` and the two-sided p-value, normal approximation with tie and continuity correction.

    Asks whether one sample tends to be larger than the other; robust to the long right tail of latencies.
    Returns p = 1.0 when there is nothing to test (an empty sample or all values tied).
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n1, n2 = len(x), len(y)
    if n1 == 0 or n2 == 0:
        return math.nan, 1.0
    ranks, ties = rankdata(np.concatenate([x, y]))
    u1 = ranks[:n1].sum() - n1 * (n1 + 1) / 2.0
    n = n1 + n2
    tie_term = float((ties**3 - ties).sum()) / (n * (n - 1)) if n > 1 else 0.0
    var = n1 * n2 / 12.0 * ((n + 1) - tie_term)
    if var <= 0:
        return float(u1), 1.0
    z = (abs(u1 - n1 * n2 / 2.0) - 0.5) / math.sqrt(var)
    return float(u1), float(min(1.0, math.erfc(max(z, 0.0) / math.sqrt(2.0))))


def bootstrap_medians(samples, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """`n_boot` medians of resamples (with replacement, same size) of `samples`: shape [n_boot]."""
    samples = np.asarray(samples, dtype=float)
    idx = rng.integers(0, len(samples), size=(n_boot, len(samples)))
    return np.median(samples[idx], axis=1)


def interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    lo, hi = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def bootstrap_p(ratios: np.ndarray) -> float:
    """Two-sided bootstrap p-value for "ratio = 1": twice the smaller tail beyond 1 (percentile method)."""
    ratios = np.asarray(ratios)
    tail = min(np.mean(ratios <= 1.0), np.mean(ratios >= 1.0))
    return float(min(1.0, 2.0 * tail))
