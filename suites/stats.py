"""Summary statistics built from the raw samples, which are always kept beside them.

Percentiles use linear interpolation between order statistics (numpy's default, 'linear' / type 7).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass


def percentile(sorted_values: list[float], q: float) -> float:
    """q in [0, 100] of an ascending list, linear interpolation (type 7)."""
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


@dataclass(frozen=True)
class Stats:
    """Latency statistics in milliseconds."""

    n: int
    median: float
    mean: float
    min: float
    p10: float
    p90: float
    p99: float
    iqr: float

    @classmethod
    def of(cls, samples_ms: list[float]) -> Stats:
        s = sorted(samples_ms)
        if not s:
            raise ValueError("Stats.of: expected at least one sample, got none")
        return cls(
            n=len(s),
            median=percentile(s, 50),
            mean=statistics.fmean(s),
            min=s[0],
            p10=percentile(s, 10),
            p90=percentile(s, 90),
            p99=percentile(s, 99),
            iqr=percentile(s, 75) - percentile(s, 25),
        )

    @property
    def rel_iqr(self) -> float:
        return self.iqr / self.median if self.median > 0 else math.inf

    def columns(self) -> dict[str, float]:
        """The result-row columns `latency_ms_<stat>`, `n_samples` and `rel_iqr`."""
        cols = {f"latency_ms_{k}": v for k, v in asdict(self).items() if k != "n"}
        return {**cols, "n_samples": self.n, "rel_iqr": self.rel_iqr}
