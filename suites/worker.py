"""The process boundary between the harness and the code it measures, as pyperf and asv draw it.

Every row is checked and timed in a worker process; what it measured reaches the runner as data, one finished
row at a time. The worker also says what it is doing (`stage`: point setup, a row's check, the round-robin
timing of some rows) and how long that may take. So a `sys.exit()`, an `os._exit()`, a segfault or a hang in
an implementation ends or stalls only the worker: the runner records the row in flight as `error` or
`timeout`, starts a fresh worker and goes on. The worker keeps what outlives a point (peaks, the canary, the
weights of the last shape), and owns the device: the runner never touches CUDA.

Workers come from a fork server that has imported torch and the implementations once, so a fresh worker
starts in a fraction of a second and with no thread pool inherited from a parent that has computed.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, replace
from multiprocessing import forkserver

from suites.suite_model import Point
from suites.timing_settings import TimingSettings

STARTUP_S = 600.0  # a fresh worker measures the peaks and the canary before it answers
PRELOAD = ["torch", "moe_impls", "suites.point_runner"]
# glibc adapts its mmap and trim thresholds to the sizes freed so far, so a row's large temporaries are served
# from fresh, zero-filled pages or from reused heap depending on what its neighbours freed: 1.31x for sort_group
# at 4096 tokens beside dense_all's 134 MB buffers, 1.01x with the thresholds fixed. Fixed at their maximum, every
# call reuses heap memory, as a long-running model process does. Read by glibc when the fork server starts.
MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=4294967295:glibc.malloc.trim_threshold=4294967295"


class WorkerLost(Exception):
    """The worker ended or stopped answering during `stage` of `rows`; `reason` is one line."""

    def __init__(self, stage: str, rows: list[str], reason: str, timed_out: bool) -> None:
        super().__init__(reason)
        self.stage, self.rows, self.reason, self.timed_out = stage, rows, reason, timed_out


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to measure points like every other worker of the run (picklable); `canary_ms` and
    `sync_ms` are the probes' current baselines (suites/watch.py)."""

    device: str
    threads: int
    seed: int
    timing: TimingSettings
    dtypes: tuple[str, ...] = ("float32",)  # the peaks are measured in each
    peaks: dict | None = None  # measured by the first worker, handed to its successors
    canary_ms: float | None = None
    sync_ms: float | None = None


def _context() -> mp.context.BaseContext:
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        with _environ("GLIBC_TUNABLES", MALLOC_TUNABLES):  # only the fork server (and its workers) get them
            forkserver.ensure_running()
        return ctx
    return mp.get_context("spawn")


@contextlib.contextmanager
def _environ(key: str, value: str) -> Iterator[None]:
    old = os.environ.get(key)
    os.environ[key] = f"{old}:{value}" if old else value
    try:
        yield
    finally:
        if old is None:
            del os.environ[key]
        else:
            os.environ[key] = old


def serve(conn, spec: WorkerSpec) -> None:
    """The worker's loop: ('point', (point, todo, note)) -> ('stage', ...)*, ('row', row)*, ('done', None)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the runner's to handle; it ends this process
    import torch

    from suites.point_runner import PointRunner

    torch.set_num_threads(spec.threads)
    device = torch.device(spec.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # events, peak stats and NVML then act on the GPU asked for, not cuda:0

    def report(stage: str, rows: list[str], limit_s: float) -> None:
        conn.send(("stage", (stage, rows, limit_s)))

    runner = PointRunner(spec, report)
    conn.send(("ready", runner.describe()))
    while True:
        try:
            kind, payload = conn.recv()
        except EOFError:
            return
        if kind == "stop":
            return
        point, todo, note = payload
        try:
            for row in runner.run(point, todo, note):
                conn.send(("row", row))
        except Exception:  # the harness's own failure, not a row's: the runner re-raises it with this traceback
            conn.send(("internal", traceback.format_exc()))
            continue
        conn.send(("done", (runner.watch.baseline_ms, runner.watch.sync_baseline_ms)))


class Worker:
    """The runner's handle on one worker process at a time; a lost worker is replaced on the next point."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec, self.proc, self.conn = spec, None, None
        self.info: dict | None = None
        self.starts, self.busy = 0, False

    def start(self) -> dict:
        """Starts a worker if none is alive; returns what it measured at start (peaks, canary, LLC)."""
        if self.proc is not None and self.proc.is_alive():
            return self.info
        ctx = _context()
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=serve, args=(child, self.spec), daemon=True, name="moe-bench-worker")
        with _main_not_reimported():
            self.proc.start()
        child.close()
        self.starts += 1
        kind, info = self._receive("start", [], STARTUP_S)
        if kind != "ready":
            raise RuntimeError(f"worker: expected 'ready', got {kind!r}")
        self.info = info
        # successors reuse the first worker's peaks and probe baselines, so every row of the run is on one footing
        self.spec = replace(self.spec, peaks=info["peaks"], canary_ms=info["canary_ms"], sync_ms=info["sync_ms"])
        return info

    def run_point(self, point: Point, todo: list[str], note: str | None) -> Iterator[dict]:
        """Rows of `todo` as the worker finishes them; raises WorkerLost if it dies or stalls."""
        self.start()
        self.conn.send(("point", (point, todo, note)))
        self.busy = True
        stage, rows, limit = "setup", list(todo), self.spec.timing.timeout_s
        while True:
            kind, payload = self._receive(stage, rows, limit)
            if kind == "stage":
                stage, rows, limit = payload
            elif kind == "row":
                yield payload
            elif kind == "done":  # with the probes' baselines, which a clean, faster window may have lowered
                self.busy = False
                canary_ms, sync_ms = payload
                self.spec = replace(self.spec, canary_ms=canary_ms, sync_ms=sync_ms)
                return
            elif kind == "internal":
                self.busy = False
                raise RuntimeError(f"moe-bench worker failed (a bug in moe-bench, not in a row):\n{payload}")

    def _receive(self, stage: str, rows: list[str], limit_s: float):
        if not self.conn.poll(limit_s):
            self.kill()
            raise WorkerLost(stage, rows, f"timeout: no progress in {limit_s:.0f} s during {_what(stage, rows)}", True)
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            pass
        self.proc.join(5)
        code = self.proc.exitcode
        self.kill()
        how = f"exit code {code}" if code is None or code >= 0 else f"signal {signal.Signals(-code).name}"
        raise WorkerLost(stage, rows, f"the worker process ended ({how}) during {_what(stage, rows)}", False)

    def kill(self) -> None:
        if self.proc is not None:
            if self.proc.is_alive():
                self.proc.kill()
            self.proc.join()
        if self.conn is not None:
            self.conn.close()
        self.proc = self.conn = None
        self.busy = False

    def close(self) -> None:
        """Stops an idle worker politely; one still measuring (Ctrl-C, an error in the runner) is killed."""
        if self.proc is not None and self.proc.is_alive() and not self.busy:
            try:
                self.conn.send(("stop", None))
                self.proc.join(10)
            except (OSError, BrokenPipeError):
                pass
        self.kill()


class InlineWorker:
    """The same protocol in this process (`moe-bench run --inline`, a debugger's choice): nothing isolates the
    run from the implementations, so an `exit()` in one ends it."""

    def __init__(self, spec: WorkerSpec) -> None:
        import torch

        from suites.point_runner import PointRunner

        device = torch.device(spec.device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        self.runner = PointRunner(spec)
        self.starts = 1

    def start(self) -> dict:
        return self.runner.describe()

    def run_point(self, point: Point, todo: list[str], note: str | None) -> Iterator[dict]:
        return self.runner.run(point, todo, note)

    def close(self) -> None: ...


@contextlib.contextmanager
def _main_not_reimported() -> Iterator[None]:
    """The worker needs nothing from the main module (implementations are found by name), but multiprocessing
    re-imports it in the child: a script without an `if __name__ == "__main__"` guard would run again there, and
    a main that is no file (`python -`, a notebook) cannot be imported at all. Hidden while the worker starts."""
    main = sys.modules["__main__"]
    saved = {k: main.__dict__.pop(k) for k in ("__file__",) if k in main.__dict__}
    spec = getattr(main, "__spec__", None)
    main.__spec__ = None
    try:
        yield
    finally:
        main.__dict__.update(saved)
        main.__spec__ = spec


def _what(stage: str, rows: list[str]) -> str:
    if stage == "check":
        return f"the check of {rows[0]}"
    if stage == "timing":
        return f"the timing of {rows[0]}" if len(rows) == 1 else f"the round-robin timing of {', '.join(rows)}"
    return {"start": "worker start-up (peaks, canary)", "setup": "point setup"}.get(stage, stage)
