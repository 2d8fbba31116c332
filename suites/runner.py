"""Runs a suite: at each point, every implementation over one shared set of weights and one input, each
checked against the reference before it is timed, then every dense baseline (suites/point_runner.py, inside
a worker process: suites/worker.py, around lost workers: suites/retries.py). One row per implementation x
point goes to disk as soon as it arrives.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from suites.environment import now, run_meta
from suites.results import ResultsWriter, read_run_meta, write_run_meta
from suites.retries import measure_point
from suites.schema import late_canary_reason, run_baseline_ms
from suites.suite_model import Suite
from suites.timing_settings import TimingSettings
from suites.worker import InlineWorker, Worker, WorkerSpec

FAILING = ("wrong", "error", "timeout")
WORKER_FACTS = (
    "peaks",
    "canary_ms",
    "sync_ms",
    "llc_bytes",
    "llc_source",
    "malloc_tunables",
)  # run.json, from the worker


@dataclass
class RunSummary:
    out_dir: Path
    statuses: Counter = field(default_factory=Counter)
    timed_s: float = 0.0
    wall_s: float = 0.0
    planned: int = 0  # rows the suite asks for
    written: int = 0  # of those, rows on disk (earlier sessions of a resumed run included)
    worker_starts: int = 0
    canary_drift: float = TimingSettings.disturb_canary_drift
    flagged: set[str] = field(default_factory=set)  # point ids the worker found disturbed as it timed them
    canaries: dict[str, tuple] = field(default_factory=dict)  # point id -> (canary_ms, the baseline it was judged by)

    @property
    def disturbed(self) -> set[str]:
        """Point ids whose timing the machine disturbed: those flagged, and those whose canary is past the limit
        of the baseline a later clean window lowered (suites/schema.py late_canary_reason)."""
        windows = ((c, b, p in self.flagged) for p, (c, b) in self.canaries.items())
        final = run_baseline_ms(windows, self.canary_drift)
        late = {p for p, (c, b) in self.canaries.items() if late_canary_reason(c, b, final, self.canary_drift)}
        return self.flagged | late

    @property
    def complete(self) -> bool:
        return self.written == self.planned

    @property
    def failed(self) -> bool:
        """A run fails when a row is wrong, errored or timed out, or when any planned row is missing."""
        return not self.complete or any(self.statuses[s] for s in FAILING)

    def add(self, row: dict) -> None:
        self.statuses[row["status"]] += 1
        if row.get("disturbed"):
            self.flagged.add(row["point_id"])
        if row.get("canary_ms") is not None:
            self.canaries[row["point_id"]] = (row["canary_ms"], row.get("canary_baseline_ms"))
        self.timed_s += sum(row.get("samples_ms") or []) / 1e3


def with_index(device: torch.device) -> torch.device:
    """A CUDA device always with its index: the worker selects it with torch.cuda.set_device, which refuses a bare
    "cuda". Bare "cuda" is device 0, the current device of a fresh process, found without starting CUDA here (the
    runner leaves CUDA to its workers)."""
    return torch.device("cuda", 0) if device.type == "cuda" and device.index is None else device


def resolve_device(requested: str | None) -> torch.device:
    if requested in (None, "auto"):
        return with_index(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {requested}: CUDA is not available to torch {torch.__version__}")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device: expected cpu or cuda, got {requested!r}")
    return with_index(device)


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
        self.suite, self.device, self.out_dir = suite, with_index(device), out_dir
        self.impls = list(suite.impls if impls is None else impls)
        self.baselines = list(suite.baselines if baselines is None else baselines)
        self.progress, self.isolate = progress, isolate

    def run(self) -> RunSummary:
        summary = RunSummary(self.out_dir, canary_drift=self.suite.timing.disturb_canary_drift)
        start = time.perf_counter()
        writer = ResultsWriter(self.out_dir)
        summary.planned = sum(len(self._names(p)) for p in self.suite.points)
        spec = WorkerSpec(
            str(self.device), torch.get_num_threads(), self.suite.seed, self.suite.timing, self.suite.dtypes
        )
        worker = (Worker if self.isolate else InlineWorker)(spec)
        bar = tqdm(total=summary.planned, unit="row", dynamic_ncols=True, file=sys.stderr, disable=not self.progress)
        meta: dict = {}
        try:
            meta = self._start_meta(worker.start(), resumed=bool(writer.done))
            write_run_meta(self.out_dir, meta)
            self._write_rows(worker, writer, bar, summary)
        except KeyboardInterrupt:
            if meta:
                meta["interrupted"] = "SIGINT"
            raise
        finally:
            bar.close()
            worker.close()
            writer.close()
            summary.wall_s = time.perf_counter() - start
            summary.written = len(writer.done & {(p.point_id, n) for p in self.suite.points for n in self._names(p)})
            summary.worker_starts = worker.starts
            if meta:
                write_run_meta(self.out_dir, self._finished_meta(meta, summary))
        return summary

    def _write_rows(self, worker: Worker | InlineWorker, writer: ResultsWriter, bar: tqdm, summary: RunSummary) -> None:
        """Every row still missing, point by point, written as it arrives; the bar counts rows already on disk."""
        for point in self.suite.points:
            names = self._names(point)
            todo = [n for n in names if (point.point_id, n) not in writer.done]
            bar.update(len(names) - len(todo))
            if not todo:
                continue
            bar.set_postfix_str(f"{point.shape} T={point.tokens} {point.dtype} {point.mode} {point.routing}")
            base = {**point.columns(), "device": self.device.type, "world_size": 1, "cache": self.suite.timing.cache}
            for row in measure_point(worker, point, todo, base):
                writer.write(row)
                summary.add(row)
                bar.update(1)

    def _names(self, point) -> list[str]:
        return self.suite.row_names(point, self.impls, self.baselines)

    def _start_meta(self, worker_info: dict, resumed: bool) -> dict:
        if resumed and (self.out_dir / "run.json").exists():
            meta = read_run_meta(self.out_dir)
            meta.setdefault("resumed_at", []).append(now())
            return meta
        return run_meta(
            self.suite,
            self.device,
            self.impls,
            self.baselines,
            worker_info["device_name"],
            worker_info["nvml"],
            isolation="worker process" if self.isolate else "inline",
            **{key: worker_info[key] for key in WORKER_FACTS},
        )

    def _finished_meta(self, meta: dict, summary: RunSummary) -> dict:
        """run.json at the end of this session: its totals added to those of a resumed run's earlier sessions."""
        meta.update(
            finished=now() if summary.complete else None,
            complete=summary.complete,
            rows_planned=summary.planned,
            rows_written=summary.written,
            wall_s=meta.get("wall_s", 0) + summary.wall_s,
            timed_fraction=summary.timed_s / summary.wall_s if summary.wall_s else None,
            statuses=dict(_statuses(self.out_dir)),
            worker_starts=meta.get("worker_starts", 0) + summary.worker_starts,
        )
        return meta


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
