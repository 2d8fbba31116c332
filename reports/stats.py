"""Statistics on raw latency samples, in numpy only: Mann-Whitney U (normal approximation) and bootstrap medians.

Verdicts in compare.py and the "significant" column of the winner table both use these, so they agree. Each
function takes one sample set (1-D) or many of equal size at once (rows of a 2-D array): a run of 200k rows
is judged in a few batches, not 200k calls.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

CHUNK_ROWS = 2048  # sample sets per batch: bounds a batch's [rows, n_boot] arrays near 16 MB
_erfc = np.vectorize(math.erfc, otypes=[float])


def mann_whitney_u(x, y):
    """U statistic of `x` and the two-sided p-value, normal approximation with tie and continuity correction.

    Asks whether one sample tends to be larger than the other; robust to the long right tail of latencies.
    Returns p = 1.0 when there is nothing to test (an empty sample or all values tied). With x [P, A] and
    y [P, B], tests each row pair and returns (U [P], p [P]); with 1-D samples, two floats.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.ndim == 1:
        u, p = mann_whitney_u(x[None, :], y[None, :])
        return float(u[0]), float(p[0])
    rows, n1, n2 = x.shape[0], x.shape[1], y.shape[1]
    if n1 == 0 or n2 == 0:
        return np.full(rows, math.nan), np.ones(rows)
    n = n1 + n2
    z = np.concatenate([x, y], axis=1)
    order = np.argsort(z, axis=1, kind="mergesort")
    ordered = np.take_along_axis(z, order, axis=1)
    starts = np.ones((rows, n), dtype=bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    ends = np.ones((rows, n), dtype=bool)
    ends[:, :-1] = starts[:, 1:]
    pos = np.broadcast_to(np.arange(n), (rows, n))
    first = np.maximum.accumulate(np.where(starts, pos, 0), axis=1)  # where each value's tie group begins
    last = np.minimum.accumulate(np.where(ends, pos, n - 1)[:, ::-1], axis=1)[:, ::-1]  # ... and ends
    ranks = np.empty((rows, n))
    np.put_along_axis(ranks, order, (first + last) / 2.0 + 1.0, axis=1)  # ties share their mean rank
    u1 = ranks[:, :n1].sum(axis=1) - n1 * (n1 + 1) / 2.0
    tie_term = ((last - first + 1) ** 2 - 1).sum(axis=1) / (n * (n - 1)) if n > 1 else np.zeros(rows)
    var = n1 * n2 / 12.0 * ((n + 1) - tie_term)
    z_score = (np.abs(u1 - n1 * n2 / 2.0) - 0.5) / np.sqrt(np.where(var > 0, var, 1.0))
    p = np.where(var > 0, np.minimum(1.0, _erfc(np.maximum(z_score, 0.0) / math.sqrt(2.0))), 1.0)
    return u1, p


def mann_whitney_p(xs: list[np.ndarray], ys: list[np.ndarray]) -> np.ndarray:
    """Two-sided p of each pair (xs[i], ys[i]) of 1-D samples of any sizes, tested in batches of equal sizes."""
    p = np.ones(len(xs))
    for index in by_sizes([xs, ys]).values():
        for chunk in chunks(index):
            p[chunk] = mann_whitney_u(np.stack([xs[i] for i in chunk]), np.stack([ys[i] for i in chunk]))[1]
    return p


def by_sizes(sets: list[list[np.ndarray]]) -> dict[tuple[int, ...], list[int]]:
    """Positions i grouped by the sizes of (sets[0][i], sets[1][i], ...): the batches a 2-D test can take."""
    out: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, samples in enumerate(zip(*sets)):
        out[tuple(len(s) for s in samples)].append(i)
    return out


def chunks(index: list[int], size: int = CHUNK_ROWS) -> list[list[int]]:
    return [index[i : i + size] for i in range(0, len(index), size)]


def bootstrap_medians(samples, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """`n_boot` medians of resamples (with replacement, same size) of `samples`: [N] -> [n_boot], [P, N] -> [P, n_boot].

    Rows share one draw of positions: the median of a resample of sorted values is the value at the median of
    its sorted positions, so one sort of n_boot x N positions serves every row, and each row costs a gather.
    """
    x = np.sort(np.asarray(samples, dtype=float), axis=-1)
    n = x.shape[-1]
    positions = np.sort(rng.integers(0, n, size=(n_boot, n)), axis=1)
    return (x[..., positions[:, (n - 1) // 2]] + x[..., positions[:, n // 2]]) / 2.0


def interval(values: np.ndarray, level: float = 0.95):
    """Central `level` interval over the last axis (percentiles, linear interpolation): (lo, hi), floats for 1-D
    values, arrays for rows. numpy's vectorised sort of C-ordered rows (bootstrap_medians returns F-ordered
    ones) is five times faster here than np.percentile."""
    ordered = np.sort(np.ascontiguousarray(values, dtype=float), axis=-1)
    n = ordered.shape[-1]
    at = np.array([(1 - level) / 2, (1 + level) / 2]) * (n - 1)
    below = np.floor(at).astype(int)
    above = np.minimum(below + 1, n - 1)
    ends = ordered[..., below] * (1 - (at - below)) + ordered[..., above] * (at - below)
    return ends[..., 0], ends[..., 1]


def bootstrap_p(ratios: np.ndarray):
    """Two-sided bootstrap p-value for "ratio = 1" over the last axis: twice the smaller tail beyond 1."""
    ratios = np.asarray(ratios)
    tail = np.minimum(np.mean(ratios <= 1.0, axis=-1), np.mean(ratios >= 1.0, axis=-1))
    return np.minimum(1.0, 2.0 * tail)
