"""Runs a suite: at each point, every implementation over one shared set of weights and one input, each
checked against the reference before it is timed, then every dense baseline (suites/point_runner.py, inside
a worker process: suites/worker.py). One row per implementation x point goes to disk as soon as it arrives.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

import moe_impls
from suites.nvml import NVML
from suites.point_runner import RTOL, check_call, one_line, timed_call
from suites.results import ResultsWriter, read_run_meta, write_run_meta
from suites.spec import Point, Suite
from suites.worker import InlineWorker, Worker, WorkerLost, WorkerSpec

__all__ = ["RTOL", "Runner", "RunSummary", "check_call", "environment", "one_line", "resolve_device", "timed_call"]

FAILING = ("wrong", "error", "timeout")


@dataclass
class RunSummary:
    out_dir: Path
    statuses: Counter = field(default_factory=Counter)
    timed_s: float = 0.0
    wall_s: float = 0.0
    planned: int = 0  # rows the suite asks for
    written: int = 0  # of those, rows on disk (earlier sessions of a resumed run included)
    worker_starts: int = 0
    disturbed: set[str] = field(default_factory=set)  # point ids whose timing the machine disturbed

    @property
    def complete(self) -> bool:
        return self.written == self.planned

    @property
    def failed(self) -> bool:
        """A run fails when a row is wrong, errored or timed out, or when any planned row is missing."""
        return not self.complete or any(self.statuses[s] for s in FAILING)


def resolve_device(requested: str | None) -> torch.device:
    if requested in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {requested}: CUDA is not available to torch {torch.__version__}")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device: expected cpu or cuda, got {requested!r}")
    return device


def git_commit() -> str | None:
    try:
        here = Path(__file__).parent
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True).stdout
        return sha.stdout.strip() + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device, name: str | None = None) -> dict:
    """Where the run happened; `name` is the device's as the worker saw it (so this process never opens CUDA)."""
    return {
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "python_version": platform.python_version(),
        "host": platform.node(),
        "device": device.type,
        "device_name": name or device_name(device),
        "cpu_threads": torch.get_num_threads(),
        "nvml": NVML(device).info(),
        "argv": sys.argv,
    }


class Runner:
    """Runs a suite's points in order through a worker process (suites/worker.py) and writes each row as it
    arrives. A run is complete only when every planned row is on disk; a worker that dies or stalls costs the
    row in flight, never the rest of the sweep."""

    def __init__(
        self,
        suite: Suite,
        device: torch.device,
        out_dir: Path,
        impls: list[str] | None = None,
        baselines: list[str] | None = None,
        progress: bool = True,
        isolate: bool = True,
    ) -> None:
        self.suite, self.device, self.out_dir = suite, device, out_dir
        self.impls = list(suite.impls if impls is None else impls)
        self.baselines = list(suite.baselines if baselines is None else baselines)
        self.progress, self.isolate = progress, isolate

    # ---- the run ------------------------------------------------------------------------------------------
    def run(self) -> RunSummary:
        summary = RunSummary(self.out_dir)
        start = time.perf_counter()
        writer = ResultsWriter(self.out_dir)
        names = self.impls + self.baselines
        summary.planned = len(self.suite.points) * len(names)
        spec = WorkerSpec(
            str(self.device), torch.get_num_threads(), self.suite.seed, self.suite.timing, self.suite.dtypes
        )
        worker = (Worker if self.isolate else InlineWorker)(spec)
        bar = _progress(summary.planned, enabled=self.progress)
        meta: dict = {}
        try:
            meta = self._start_meta(worker.start(), resumed=bool(writer.done))
            write_run_meta(self.out_dir, meta)
            for point in self.suite.points:
                todo = [n for n in names if (point.point_id, n) not in writer.done]
                bar.update(len(names) - len(todo))
                if not todo:
                    continue
                bar.set_postfix_str(f"{point.shape} T={point.tokens} {point.dtype} {point.mode} {point.routing}")
                for row in self._measure(worker, point, todo):
                    writer.write(row)
                    summary.statuses[row["status"]] += 1
                    if row.get("disturbed"):
                        summary.disturbed.add(row["point_id"])
                    summary.timed_s += sum(row.get("samples_ms") or []) / 1e3
                    bar.update(1)
        except KeyboardInterrupt:
            if meta:
                meta["interrupted"] = "SIGINT"
            raise
        finally:
            bar.close()
            worker.close()
            writer.close()
            summary.wall_s = time.perf_counter() - start
            summary.written = _count_rows(writer.done, self.suite.points, names)
            summary.worker_starts = worker.starts
            if meta:
                meta.update(
                    finished=_now() if summary.complete else None,
                    complete=summary.complete,
                    rows_planned=summary.planned,
                    rows_written=summary.written,
                    wall_s=meta.get("wall_s", 0) + summary.wall_s,
                    timed_fraction=summary.timed_s / summary.wall_s if summary.wall_s else None,
                    statuses=dict(_statuses(self.out_dir)),
                    worker_starts=meta.get("worker_starts", 0) + worker.starts,
                )
                write_run_meta(self.out_dir, meta)
        return summary

    def _measure(self, worker, point: Point, todo: list[str]) -> Iterator[dict]:
        """The point's rows; when the worker is lost, the row in flight is blamed and the rest run again.

        Lost in a row's check or in point setup: that row (all of them, for setup) gets the failure. Lost while
        several rows were timed together: the culprit is unknown, so each of them is measured again alone, and
        only a row that loses a worker on its own is blamed. Each retry has fewer rows, so this ends.
        """
        queue: list[tuple[list[str], str | None]] = [(todo, None)]
        while queue:
            names, note = queue.pop(0)
            done: set[str] = set()
            try:
                for row in worker.run_point(point, names, note):
                    done.add(row["impl"])
                    yield row
            except WorkerLost as lost:
                left = [n for n in names if n not in done]
                status = "timeout" if lost.timed_out else "error"
                if lost.stage == "timing" and len(lost.rows) > 1:
                    alone = "timed alone: a worker was lost while this point's rows were timed together"
                    queue[:0] = [([n], alone) for n in left]
                    continue
                blamed = [n for n in lost.rows if n in left] if lost.stage in ("check", "timing") else []
                blamed = blamed or left  # setup, start-up, or a stage naming no row still to come: all of them
                for name in blamed:
                    yield _failed_row(point, self.device, name, status, lost.reason, self.suite.timing.cache)
                rest = [n for n in left if n not in blamed]
                if rest:
                    queue.insert(0, (rest, note))

    def _start_meta(self, worker_info: dict, resumed: bool) -> dict:
        if resumed and (self.out_dir / "run.json").exists():
            meta = read_run_meta(self.out_dir)
            meta.setdefault("resumed_at", []).append(_now())
            return meta
        return {
            "suite": self.suite.name,
            "suite_path": str(self.suite.path),
            "suite_hash": self.suite.file_hash,
            "seed": self.suite.seed,
            "impls": self.impls,
            "baselines": self.baselines,
            "timing": asdict(self.suite.timing),
            "isolation": "worker process" if self.isolate else "inline",
            "started": _now(),
            "finished": None,
            **environment(self.device, worker_info["device_name"]),
            "peaks": worker_info["peaks"],
            "canary_ms": worker_info["canary_ms"],
            "llc_bytes": worker_info["llc_bytes"],
            "llc_source": worker_info["llc_source"],
            "malloc_tunables": worker_info["malloc_tunables"],
        }


def _failed_row(point: Point, device: torch.device, name: str, status: str, error: str, cache: str) -> dict:
    family = "dense" if name in moe_impls.BASELINES else "moe"
    base = {**point.columns(), "device": device.type, "world_size": 1, "cache": cache}
    return {**base, "impl": name, "family": family, "status": status, "error": error}


def _count_rows(done: set[tuple[str, str]], points, names: list[str]) -> int:
    planned = {(p.point_id, n) for p in points for n in names}
    return len(planned & done)


def _statuses(out_dir: Path) -> Counter:
    """Statuses of every row on disk, those of earlier sessions of a resumed run included."""
    counts: Counter = Counter()
    path = out_dir / "results.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and "status" in row:
                counts[row["status"]] += 1
    return counts


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class _NoBar:
    def update(self, n: int = 1) -> None: ...
    def set_postfix_str(self, s: str) -> None: ...
    def close(self) -> None: ...


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="row", dynamic_ncols=True, file=sys.stderr)
