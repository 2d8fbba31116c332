"""Read a run directory (`run.json` + `results.jsonl`, described in suites/schema.py) into (meta, DataFrame).

The frame always has every schema column (absent ones are null), numeric columns are numeric, and the latency
summary is filled in from `samples_ms` where a row omits it, so plots and tables never need to guard a column.
A line that is not a row, or a row whose timings are not positive finite numbers (a negative median would win
every table), is left out with a one-line warning on stderr; the rest of the run is still read.
"""

from __future__ import annotations

import gc
import json
import math
import sys
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from itertools import islice
from pathlib import Path

import numpy as np
import pandas as pd

from reports.disturbed import rejudge_canary
from reports.facets import point_key
from reports.stats import by_sizes
from suites.schema import (
    LATENCY_SUMMARY_COLUMNS,
    RESULT_COLUMNS,
    SCHEMA_VERSION,
    is_positive_number,
    latency_summary,
)

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
    "shape",
    "model",
    "cache",
    "cache_note",
    "timer_note",
    "reference",
)
FLAG_COLUMNS = ("normalize_topk", "disturbed", "l2_flushed")  # true, false or null
STRUCTURED_COLUMNS = ("disturbance", "earlier_samples_ms", "gpu_throttle", "signals_missing")  # lists, dicts
# Absent from older results files: the point's name and routing renormalisation (identity), and whether the
# machine was disturbed while the row was timed, why, and the cache state of the timed calls.
OPTIONAL_COLUMNS = ("shape", "normalize_topk", "disturbed", "disturbance", "cache")
NUMERIC_COLUMNS = tuple(
    c for c in RESULT_COLUMNS if c not in (*LIST_COLUMNS, *TEXT_COLUMNS, *FLAG_COLUMNS, *STRUCTURED_COLUMNS)
)
TIMING_COLUMNS = tuple(f"latency_ms_{s}" for s in ("median", "mean", "min", "p10", "p90", "p99"))
DENSE_IMPLS = ("param_matched", "flop_matched")
MAX_WARNINGS = 20  # lines of warnings per file; the rest are counted in one more line
NUMBER_TYPES = {int, float}  # JSON numbers; true and false are not
CHUNK_ROWS = 5_000


class RunLoadError(ValueError):
    """A run directory that cannot be read; the message is one line: what was expected, what was found, where."""


def load_run(run_dir: str | Path, columns: Collection[str] | None = None) -> tuple[dict, pd.DataFrame]:
    """(run.json, the rows as a normalised frame); with `columns`, only those are read (the rest are null)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunLoadError(f"expected a run directory, got {run_dir}: no such directory")
    meta = _read_meta(run_dir / "run.json")
    ignored: list[str] = []
    rows = read_rows(run_dir / "results.jsonl", ignored)
    if columns is not None:
        rows = ({c: row[c] for c in columns if c in row} for row in rows)
    with paused_gc():
        df = _frame(rows)
    for line in ignored[:MAX_WARNINGS]:
        print(f"moe-bench: {line}", file=sys.stderr)
    if len(ignored) > MAX_WARNINGS:
        print(
            f"moe-bench: {len(ignored) - MAX_WARNINGS} more lines of {run_dir}/results.jsonl ignored", file=sys.stderr
        )
    return meta, normalise(df, (meta.get("timing") or {}).get("disturb_canary_drift"))


@contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic garbage collection inside: with a run's millions of live objects each collection scans them all
    (a third of the time of reading 200k rows), and bulk work on rows makes no cycles to collect."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _frame(rows: Iterable[dict]) -> pd.DataFrame:
    """Rows as one frame in file order, built CHUNK_ROWS at a time: 200k row dicts alive at once take gigabytes
    (12 kB each). Text repeated over rows (impl, dtype, point ids) is kept once, not once per row."""
    rows = iter(rows)
    frames, texts = [], {}
    while chunk := list(islice(rows, CHUNK_ROWS)):
        frame = pd.DataFrame(chunk)
        for col in [c for c, dtype in frame.dtypes.items() if pd.api.types.is_string_dtype(dtype)]:  # str, object
            frame[col] = [texts.setdefault(v, v) if type(v) is str else v for v in frame[col].tolist()]
        frames.append(frame)
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


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


def read_rows(path: Path, ignored: list[str], mentioning: str = "") -> Iterator[dict]:
    """Each usable row of a results.jsonl; one line per line left out ('PATH line N: why; ... ignored') is
    appended to `ignored`. With `mentioning`, lines without that text are skipped unread (a cheap filter)."""
    if not path.is_file():
        raise RunLoadError(f"expected {path}: file missing")
    with path.open(encoding="utf-8", errors="replace") as fh:  # a corrupt byte spoils its line, not the file
        for lineno, line in enumerate(fh, start=1):
            if mentioning not in line or line.isspace():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                ignored.append(f"{path} line {lineno}: not JSON (a torn or corrupt line: {exc}); line ignored")
                continue
            why = row_problem(row)
            if why:
                ignored.append(f"{path} line {lineno}: {why}")
            else:
                yield row


def row_problem(row) -> str | None:
    """Why a parsed line cannot be used as a row, or None when it can."""
    if not isinstance(row, dict):
        return f"a JSON {type(row).__name__}, not a row object; line ignored"
    if not isinstance(row.get("impl"), str):
        return "an object without an 'impl' name, not a row; line ignored"
    for col in TIMING_COLUMNS:
        value = row.get(col)
        if value is not None and not is_positive_number(value):
            return f"{col} = {_show(value)}: not a positive finite number; row ignored"
    for col in LIST_COLUMNS:
        values = row.get(col)
        if values is not None and not (isinstance(values, list) and set(map(type, values)) <= NUMBER_TYPES):
            return f"{col} = {_show(values)}: not a list of numbers; row ignored"
    samples = row.get("samples_ms")
    if samples and not (min(samples) > 0 and math.isfinite(sum(samples))):  # nan fails one test or the other
        i, value = next((i, v) for i, v in enumerate(samples) if not is_positive_number(v))
        return f"samples_ms[{i}] = {_show(value)}: not a positive finite number; row ignored"
    return None


def _show(value) -> str:
    return repr(value) if isinstance(value, str) else json.dumps(value)[:60]


def normalise(df: pd.DataFrame, canary_drift: float | None = None) -> pd.DataFrame:
    """Add missing schema columns, coerce types and derive the latency summary from the raw samples; with the
    run's canary drift limit, judge each window's canary against the run's last baseline (rejudge_canary)."""
    missing = [col for col in dict.fromkeys((*RESULT_COLUMNS, *OPTIONAL_COLUMNS)) if col not in df.columns]
    df = pd.concat([df, pd.DataFrame(dict.fromkeys(missing), index=df.index, columns=missing, dtype=object)], axis=1)
    for col in NUMERIC_COLUMNS:
        numbers = pd.to_numeric(df[col], errors="coerce")
        if numbers.notna().any() or df[col].isna().all():  # else text the schema gained since: kept as read
            df[col] = numbers.astype(float)
    for col in TEXT_COLUMNS:
        df[col] = df[col].astype(object).where(df[col].notna(), None)
    for col in LIST_COLUMNS:  # lists of numbers as read (read_rows checked them), else None
        df[col] = [v if isinstance(v, list) else None for v in df[col]]
    for col in FLAG_COLUMNS:
        df[col] = pd.Series([bool(v) if isinstance(v, (bool, np.bool_)) else None for v in df[col]], df.index, object)
    df["disturbance"] = [[str(r) for r in v] if isinstance(v, list) else None for v in df["disturbance"]]
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
    df = df.reset_index(drop=True).copy()  # one block per dtype again: the columns above were set one by one
    if canary_drift is not None:
        rejudge_canary(df, canary_drift)
    # A point is disturbed when any of its rows was: its rows were timed side by side, round-robin.
    disturbed = df["disturbed"].eq(True)
    df["point_disturbed"] = disturbed.groupby(point_key(df).to_numpy()).transform("any") if len(df) else disturbed
    return df


def _fill_latency(df: pd.DataFrame) -> None:
    """Derive each summary a row omits from its samples, in batches of rows with equal sample counts."""
    samples = df["samples_ms"].tolist()
    need = {col: df[col].isna().to_numpy() for col in LATENCY_SUMMARY_COLUMNS}
    rows = np.flatnonzero(np.logical_or.reduce(list(need.values())) & df["samples_ms"].map(bool).to_numpy(dtype=bool))
    for index in by_sizes([[samples[i] for i in rows]]).values():
        at = rows[index]
        summary = latency_summary(np.asarray([samples[i] for i in at], dtype=float))
        for col, values in summary.items():
            fill = need[col][at]
            if fill.any():
                df.loc[df.index[at[fill]], col] = values[fill]
    has_samples = df["samples_ms"].map(bool)
    missing = df["n_samples"].isna() & has_samples
    df.loc[missing, "n_samples"] = df.loc[missing, "samples_ms"].map(len).astype(float)
    missing = df["tokens_per_s"].isna() & df["latency_ms_median"].gt(0)
    df.loc[missing, "tokens_per_s"] = df.loc[missing, "tokens"] / (df.loc[missing, "latency_ms_median"] / 1e3)


def samples_of(row) -> np.ndarray:
    """The raw samples of one row in ms; falls back to the median alone when the row kept no samples."""
    samples = row["samples_ms"]
    if samples:
        return np.asarray(samples, dtype=float)
    median = row["latency_ms_median"]
    return np.asarray([median], dtype=float) if pd.notna(median) else np.asarray([], dtype=float)


def samples_column(frame: pd.DataFrame) -> list[np.ndarray]:
    """`samples_of` every row of `frame`, reading only the two columns it needs."""
    return [
        samples_of({"samples_ms": s, "latency_ms_median": m})
        for s, m in zip(frame["samples_ms"].tolist(), frame["latency_ms_median"].tolist())
    ]


def latency_band(row) -> tuple[float, float, float]:
    """(median, p10, p90) in ms from the raw samples, or from the row's summary columns when it kept none."""
    samples = row["samples_ms"]
    if samples:
        summary = latency_summary(np.asarray([samples], dtype=float))
        return tuple(float(summary[f"latency_ms_{s}"][0]) for s in ("median", "p10", "p90"))
    med = row["latency_ms_median"]
    p10 = row["latency_ms_p10"] if pd.notna(row["latency_ms_p10"]) else med
    p90 = row["latency_ms_p90"] if pd.notna(row["latency_ms_p90"]) else med
    return float(med), float(p10), float(p90)
