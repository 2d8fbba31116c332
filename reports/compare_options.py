"""`moe-bench compare`'s options, read from text: each bad value is one line naming the option."""

from __future__ import annotations

import math

from reports.compare import CompareInputError


def parse_threshold(text: str | float) -> float:
    """'5%', '5' and '0.05' all mean 5%: values above 1 are percentages."""
    raw = str(text).strip()
    try:
        value = float(raw.rstrip("%"))
    except ValueError:
        raise CompareInputError(f"--threshold: expected a threshold such as 5% or 0.05, got {raw!r}") from None
    if raw.endswith("%") or value > 1:
        value /= 100
    if not 0 < value < 10:  # also refuses nan and inf
        raise CompareInputError(f"--threshold: expected a positive finite threshold below 1000%, got {raw!r}")
    return value


def parse_alpha(text: str | float) -> float:
    """The significance level: strictly between 0 and 1 (nan, inf, 0 and 1 would test nothing)."""
    raw = str(text).strip()
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0 < value < 1:
        raise CompareInputError(f"--alpha: expected a significance level between 0 and 1 such as 0.01, got {raw!r}")
    return value


def parse_seed(text: str | int) -> int:
    raw = str(text).strip()
    if not raw.isdecimal():
        raise CompareInputError(f"--seed: expected a non-negative integer, got {raw!r}")
    return int(raw)
