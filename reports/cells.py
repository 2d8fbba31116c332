"""Table cells that stay typed until the Markdown/HTML edge: a number keeps its value, its format and its note.

Tables hold `Cell`s: text, or a `Number` that the renderer writes with its format and aligns as a number. A
missing value is the text "-", not a number. The formats here are also the text compare.py writes directly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

Format = Callable[[float], str]


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


def fmt_value(value) -> str:
    """Any value of a results column as text: null as '-', a whole float as an integer (16, not 16.0)."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "-"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def significant(digits: int, unit: str = "") -> Format:
    """`digits` significant figures, then the unit: significant(3)(0.81234) == '0.812'."""
    return lambda x: f"{x:.{digits}g}{unit}"


def signed_percent(x: float) -> str:
    return f"{x:+.1%}"


@dataclass(frozen=True, slots=True)  # slots: a 200k-row report holds a million of these
class Number:
    """A numeric cell: `value` written by `format`, then `note` (e.g. '(n.s.)', '(disturbed)') after a space."""

    value: float
    format: Format = fmt_value
    note: str = ""

    @property
    def text(self) -> str:
        shown = self.format(self.value)
        return f"{shown} {self.note}" if self.note else shown


Cell = str | Number


def number(value, format: Format = fmt_value, note: str = "") -> Cell:
    """A Number, or the text '-' where the value is missing (null or nan): a missing value is no number."""
    if value is None or pd.isna(value):
        return "-"
    return Number(value, format, note)


def cell_text(cell: Cell) -> str:
    return cell.text if isinstance(cell, Number) else str(cell)
