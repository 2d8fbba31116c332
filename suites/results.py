"""A run directory: `run.json` (what ran, where) and `results.jsonl` (one row per implementation x point).

Rows are appended and flushed one at a time, so a killed run loses at most the row in flight; a torn last
line is discarded on resume.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from suites.schema import SCHEMA_VERSION

RESULTS = "results.jsonl"
RUN = "run.json"


def _clean(value: object) -> object:
    """JSON has no NaN or infinity: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class ResultsWriter:
    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / RESULTS
        self.done: set[tuple[str, str]] = set()
        if self.path.exists():
            self._recover()
        self._file = self.path.open("a")

    def _recover(self) -> None:
        """Keep every complete row; truncate a torn last line left by a killed run."""
        good_bytes = 0
        with self.path.open("rb") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    break
                if not line.endswith(b"\n"):
                    break
                self.done.add((row["point_id"], row["impl"]))
                good_bytes += len(line)
        with self.path.open("r+b") as f:
            f.truncate(good_bytes)

    def write(self, row: dict) -> None:
        self._file.write(json.dumps(_clean(row)) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.done.add((row["point_id"], row["impl"]))

    def close(self) -> None:
        self._file.close()


def write_run_meta(out_dir: Path, meta: dict) -> None:
    tmp = out_dir / (RUN + ".tmp")
    tmp.write_text(json.dumps(_clean({"schema_version": SCHEMA_VERSION, **meta}), indent=2))
    tmp.replace(out_dir / RUN)


def read_run_meta(out_dir: Path) -> dict:
    return json.loads((out_dir / RUN).read_text())
