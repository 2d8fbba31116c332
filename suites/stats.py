"""Summary statistics built from the raw samples, which are always kept beside them.

How each statistic derives from the samples (quantiles, IQR) is defined once, in suites/schema.py
(`latency_summary`), so the rows written here and the summaries reports/load.py fills in agree.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from suites.schema import latency_summary


@dataclass(frozen=True)
class Stats:
    """Latency statistics in milliseconds; the fields after `n` are the `latency_ms_<field>` columns."""

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
        if not samples_ms:
            raise ValueError("Stats.of: expected at least one sample, got none")
        summary = latency_summary(np.asarray([samples_ms], dtype=float))
        return cls(n=len(samples_ms), **{col.removeprefix("latency_ms_"): float(v[0]) for col, v in summary.items()})

    @property
    def rel_iqr(self) -> float:
        return self.iqr / self.median if self.median > 0 else math.inf

    def columns(self) -> dict[str, float]:
        """The result-row columns `latency_ms_<stat>`, `n_samples` and `rel_iqr`."""
        cols = {f"latency_ms_{k}": v for k, v in asdict(self).items() if k != "n"}
        return {**cols, "n_samples": self.n, "rel_iqr": self.rel_iqr}
