"""Read a run directory (`run.json` + `results.jsonl`, described in suites/schema.py) into (meta, DataFrame).

The frame always has every schema column (absent ones are null), numeric columns are numeric, and the latency
summary is filled in from `samples_ms` where a row omits it, so plots and tables never need to guard a column.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from suites.schema import RESULT_COLUMNS, SCHEMA_VERSION

LIST_COLUMNS = ("samples_ms", "tokens_per_expert")
TEXT_COLUMNS = (
    "point_id",
    "impl",
    "family",
    "activation",
    "dtype",
    "mode",
    "router",
    "routing",
    "device",
    "status",
    "error",
    "timer",
    "mem_kind",
    "energy_note",
)
NUMERIC_COLUMNS = tuple(c for c in RESULT_COLUMNS if c not in LIST_COLUMNS and c not in TEXT_COLUMNS)
DENSE_IMPLS = ("param_matched", "flop_matched")


class RunLoadError(ValueError):
    """A run directory that cannot be read; the message is one line: what was expected, what was found, where."""


def load_run(run_dir: str | Path) -> tuple[dict, pd.DataFrame]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunLoadError(f"expected a run directory, got {run_dir}: no such directory")
    meta = _read_meta(run_dir / "run.json")
    rows = _read_rows(run_dir / "results.jsonl")
    return meta, normalise(pd.DataFrame(rows))


def _read_meta(path: Path) -> dict:
    if not path.is_file():
        raise RunLoadError(f"expected {path}: file missing")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunLoadError(f"expected JSON in {path}: {exc}") from None
    if not isinstance(meta, dict):
        raise RunLoadError(f"expected a JSON object in {path}, got {type(meta).__name__}")
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise RunLoadError(f"{path}: schema_version {version!r} is incompatible, this moe-bench reads {SCHEMA_VERSION}")
    return meta


def _read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        raise RunLoadError(f"expected {path}: file missing")
    rows = []
    with path.open() as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RunLoadError(f"expected one JSON object per line in {path}, line {lineno}: {exc}") from None
            if not isinstance(row, dict):
                raise RunLoadError(f"expected a JSON object on {path} line {lineno}, got {type(row).__name__}")
            rows.append(row)
    return rows


def normalise(df: pd.DataFrame) -> pd.DataFrame:
    """Add missing schema columns, coerce types and derive the latency summary from the raw samples."""
    df = df.copy()
    for col in RESULT_COLUMNS:
        if col not in df.columns:
            df[col] = None
    for col in NUMERIC_COLUMNS:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    for col in TEXT_COLUMNS:
        df[col] = df[col].astype(object).where(df[col].notna(), None)
    for col in LIST_COLUMNS:
        df[col] = [_as_list(v) for v in df[col]]
    if "impl" in df and df["impl"].isna().any():
        df["impl"] = df["impl"].fillna("?")
    # A row without a status but with timings was measured; one with neither is an error we cannot explain.
    no_status = df["status"].isna()
    timed = df["samples_ms"].map(bool) | df["latency_ms_median"].notna()
    df.loc[no_status & timed, "status"] = "ok"
    df.loc[no_status & ~timed, "status"] = "error"
    df.loc[no_status & ~timed, "error"] = "row has no status and no timings"
    family = df["impl"].map(lambda i: "dense" if i in DENSE_IMPLS else "moe")
    df["family"] = df["family"].where(df["family"].notna(), family)
    _fill_latency(df)
    return df.reset_index(drop=True)


def _as_list(value) -> list | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (list, tuple, np.ndarray)):
        return [float(v) for v in value]
    return None


def _fill_latency(df: pd.DataFrame) -> None:
    fills = {
        "latency_ms_median": lambda s: np.median(s),
        "latency_ms_mean": lambda s: np.mean(s),
        "latency_ms_min": lambda s: np.min(s),
        "latency_ms_p10": lambda s: np.percentile(s, 10),
        "latency_ms_p90": lambda s: np.percentile(s, 90),
        "latency_ms_p99": lambda s: np.percentile(s, 99),
        "latency_ms_iqr": lambda s: np.subtract(*np.percentile(s, [75, 25])),
    }
    has_samples = df["samples_ms"].map(bool)
    for col, fn in fills.items():
        need = df[col].isna() & has_samples
        if need.any():
            df.loc[need, col] = [float(fn(np.asarray(s))) for s in df.loc[need, "samples_ms"]]
    need = df["n_samples"].isna() & has_samples
    df.loc[need, "n_samples"] = df.loc[need, "samples_ms"].map(len).astype(float)
    need = df["tokens_per_s"].isna() & df["latency_ms_median"].gt(0)
    df.loc[need, "tokens_per_s"] = df.loc[need, "tokens"] / (df.loc[need, "latency_ms_median"] / 1e3)


def samples_of(row) -> np.ndarray:
    """The raw samples of one row in ms; falls back to the median alone when the row kept no samples."""
    samples = row["samples_ms"]
    if samples:
        return np.asarray(samples, dtype=float)
    median = row["latency_ms_median"]
    return np.asarray([median], dtype=float) if pd.notna(median) else np.asarray([], dtype=float)


def latency_band(row) -> tuple[float, float, float]:
    """(median, p10, p90) in ms from the raw samples, or from the row's summary columns when it kept none."""
    samples = row["samples_ms"]
    if samples:
        p10, med, p90 = np.percentile(np.asarray(samples, dtype=float), [10, 50, 90])
        return float(med), float(p10), float(p90)
    med = row["latency_ms_median"]
    p10 = row["latency_ms_p10"] if pd.notna(row["latency_ms_p10"]) else med
    p90 = row["latency_ms_p90"] if pd.notna(row["latency_ms_p90"]) else med
    return float(med), float(p10), float(p90)
