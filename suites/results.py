"""A run directory: `run.json` (what ran, where) and `results.jsonl` (one row per implementation x point).

Rows are validated, appended and fsynced one at a time, so a killed run loses at most the row in flight. On
resume, a torn last line (no newline: that row) is cut off; any other line that is not a valid row is moved to
`results.quarantine.jsonl` with its line number, and its row is measured again. One process writes a directory
at a time: `.lock` holds an exclusive flock and the writer's PID, and the OS drops it when that process ends.
Every failure is a `ResultsError` whose message is one line naming the directory.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import sys
from pathlib import Path

from suites.schema import SCHEMA_VERSION, STATUSES

RESULTS = "results.jsonl"
RUN = "run.json"
QUARANTINE = "results.quarantine.jsonl"
LOCK = ".lock"
FAMILIES = ("moe", "dense")


class ResultsError(Exception):
    """A results directory that cannot be used as asked; the message is one line naming it."""


class ResultsWriteError(ResultsError, OSError):
    """Writing failed (a full disk, a lost mount): the rows written before are on disk, so the run can resume."""

    def __init__(self, out_dir: Path, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror)
        self.out_dir = out_dir

    def __str__(self) -> str:
        return f"cannot write to results directory {self.out_dir}: {self.strerror}"


class RunLockedError(ResultsError):
    """Another live process holds the directory's lock: it is still writing this run."""


def _clean(value: object) -> object:
    """JSON has no NaN or infinity: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def validate_row(row: object) -> None:
    """ValueError unless `row` carries the identity and outcome that resume and every reader rely on."""
    if not isinstance(row, dict):
        raise ValueError(f"results row: expected a JSON object, got {type(row).__name__}")
    for key in ("point_id", "impl"):
        if not isinstance(row.get(key), str) or not row[key]:
            raise ValueError(f"results row: {_shown(row, key)}: expected a non-empty string")
    for key, allowed in (("family", FAMILIES), ("status", STATUSES)):
        if row.get(key) not in allowed:
            raise ValueError(f"results row {row['impl']}: {_shown(row, key)}: expected one of {', '.join(allowed)}")


def _shown(row: dict, key: str) -> str:
    return f"{key} = {row[key]!r}" if key in row else f"{key} missing"


class RunLock:
    """An exclusive flock on OUT/.lock holding the owner's PID, so that two processes never append to one run.

    The OS drops the lock when its process ends however it ends, so a killed run leaves no stale lock.
    """

    def __init__(self, out_dir: Path) -> None:
        _make_dir(out_dir)
        path = out_dir / LOCK
        try:
            self._file = path.open("a+")
        except OSError as exc:
            raise ResultsError(f"results directory {out_dir}: cannot create {LOCK} there: {exc.strerror}") from None
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "unknown"
            self._file.close()
            raise RunLockedError(
                f"results directory {out_dir} is being written by process {holder} (lock {path}); "
                "wait for it to end or choose another directory"
            ) from None
        try:
            self._file.truncate(0)
            self._file.write(f"{os.getpid()}\n")
            self._file.flush()
        except OSError as exc:
            self._file.close()
            raise ResultsWriteError(out_dir, exc) from None

    def release(self) -> None:
        self._file.close()  # closing the last descriptor drops the flock


def check_usable(out_dir: Path) -> None:
    """ResultsError before any work when OUT cannot take a run: it is a file, lies below one, or a live process
    is writing it. Creates no directory, so a run refused later leaves nothing behind."""
    if out_dir.exists():
        RunLock(out_dir).release()
        return
    ancestor = next(p for p in out_dir.absolute().parents if p.exists())
    if not ancestor.is_dir():
        raise ResultsError(f"results directory {out_dir}: cannot create it: {ancestor} is a file")


def _make_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ResultsError(f"results directory {out_dir}: is a file, expected a directory")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ResultsError(f"results directory {out_dir}: cannot create it: {exc.strerror}") from None


class ResultsWriter:
    """Appends validated rows to OUT/results.jsonl while holding OUT's lock; `done` is the (point_id, impl) on disk."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.path = out_dir / RESULTS
        self.done: set[tuple[str, str]] = set()
        self._lock = RunLock(out_dir)  # before recovery, which rewrites the file
        try:
            if self.path.exists():
                self._recover()
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            self._lock.release()
            raise ResultsWriteError(out_dir, exc) from None
        except BaseException:
            self._lock.release()
            raise

    def _recover(self) -> None:
        """Keep every valid row and quarantine the other lines; cut off a torn last line (the row in flight)."""
        data = self.path.read_bytes()
        *lines, torn = data.split(b"\n")
        kept, bad = [], []
        for number, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
                validate_row(row)
            except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                bad.append({"line": number, "error": str(exc), "text": line.decode(errors="replace")})
                continue
            kept.append(line + b"\n")
            self.done.add((row["point_id"], row["impl"]))
        if bad:
            self._quarantine(bad)
            _replace(self.path, b"".join(kept))
        elif torn:
            os.truncate(self.path, len(data) - len(torn))

    def _quarantine(self, bad: list[dict]) -> None:
        """Append the bad lines to the side file, then say so in one line: their rows will be measured again."""
        side = self.out_dir / QUARANTINE
        with side.open("a") as f:
            f.writelines(json.dumps(entry) + "\n" for entry in bad)
            f.flush()
            os.fsync(f.fileno())
        numbers = ", ".join(str(entry["line"]) for entry in bad[:5]) + (", ..." if len(bad) > 5 else "")
        print(
            f"moe-bench: {self.path}: {len(bad)} line(s) that are not valid rows ({numbers}) moved to {side}; "
            "their rows run again",
            file=sys.stderr,
        )

    def write(self, row: dict) -> None:
        """Validate, append and fsync one row: ValueError for a malformed row, ResultsWriteError when the disk fails."""
        validate_row(row)
        try:
            line = json.dumps(_clean(row), allow_nan=False) + "\n"
        except (TypeError, ValueError) as exc:
            raise ValueError(f"results row {row['impl']} at point {row['point_id']}: not JSON: {exc}") from None
        try:
            _write_all(self._fd, line.encode())
            os.fsync(self._fd)
        except OSError as exc:
            raise ResultsWriteError(self.out_dir, exc) from exc
        self.done.add((row["point_id"], row["impl"]))

    def close(self) -> None:
        os.close(self._fd)
        self._lock.release()


def _write_all(fd: int, data: bytes) -> None:
    """os.write may write part of `data` (a disk filling up); the rest follows, or the OSError says why not."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _replace(path: Path, data: bytes) -> None:
    """Atomically: a crash leaves the old file or the new one, never half of it."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def count_rows(out_dir: Path) -> int:
    """Complete lines in results.jsonl: the rows a resume keeps (a torn last line is not one)."""
    path = out_dir / RESULTS
    return path.read_bytes().count(b"\n") if path.exists() else 0


def check_resume(out_dir: Path, suite_name: str, suite_hash: str) -> None:
    """ResultsError unless OUT holds a run of this very suite file under this schema: resuming appends to it, and
    another suite's rows, or rows of another schema version, must never be merged into one run."""
    if not (out_dir / RESULTS).exists():
        raise ResultsError(f"results directory {out_dir}: no {RESULTS} to resume")
    if not (out_dir / RUN).exists():
        if (out_dir / RESULTS).stat().st_size == 0:  # stopped before its first row: nothing to merge
            return
        raise ResultsError(f"{out_dir / RUN}: missing, so nothing says which suite wrote {RESULTS}; cannot resume")
    meta = read_run_meta(out_dir)
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise ResultsError(
            f"{out_dir / RUN}: schema_version {meta.get('schema_version')!r}, this moe-bench writes {SCHEMA_VERSION}; "
            "cannot resume into it (start a new results directory)"
        )
    if meta.get("suite_hash") != suite_hash:
        what = "changed since" if meta.get("suite") == suite_name else f"is not {meta.get('suite')!r}, which wrote"
        raise ResultsError(
            f"{out_dir / RUN}: suite {suite_name!r} (hash {suite_hash}) {what} this run (hash "
            f"{meta.get('suite_hash')}); resume with that suite file or start a new results directory"
        )


def write_run_meta(out_dir: Path, meta: dict) -> None:
    tmp = out_dir / (RUN + ".tmp")
    try:
        tmp.write_text(json.dumps(_clean({"schema_version": SCHEMA_VERSION, **meta}), indent=2))
        tmp.replace(out_dir / RUN)
    except OSError as exc:
        raise ResultsWriteError(out_dir, exc) from exc


def read_run_meta(out_dir: Path) -> dict:
    """run.json as a dict; ResultsError naming the file when it cannot be read or is not a JSON object."""
    path = out_dir / RUN
    try:
        meta = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ResultsError(f"{path}: not a readable run.json: {exc}") from None
    if not isinstance(meta, dict):
        raise ResultsError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    return meta
