"""Run a function on N gloo ranks spawned from a test, and bring back what each rank returned.

Shared by the expert-parallel layer tests (tests/moe_impls) and the instrument's (tests/suites). A rank's
function must be importable by name (spawn pickles it), take (rank, world) and return something torch.save takes.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

SPAWN_DEADLINE_S = 90


def _entry(rank: int, world: int, port: int, out_dir: str, fn: Callable[[int, int], object]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=timedelta(seconds=60)
    )
    try:
        torch.save(fn(rank, world), os.path.join(out_dir, f"rank{rank}.pt"))
    except Exception as e:
        Path(out_dir, f"rank{rank}.err").write_text(f"{type(e).__name__}: {str(e).splitlines()[0]}")
        raise
    # Every rank reaches teardown together (as suites/ep_run.py's ranks do): gloo's connection threads could
    # otherwise see a peer close mid-teardown and end the process in std::terminate.
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(fn: Callable[[int, int], object], world: int, out_dir: Path) -> list:
    """Run fn(rank, world) on `world` gloo ranks and return what each returned.

    If a rank raises, the others fail in their next collective (gloo sees the peer gone) or are killed; the
    error raised here names every failed rank's exception, the cause first by rank order. A hang is killed.
    """
    ctx = mp.start_processes(
        _entry, args=(world, _free_port(), str(out_dir), fn), nprocs=world, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + SPAWN_DEADLINE_S
    try:
        while not ctx.join(timeout=1, grace_period=5):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    p.kill()
                pytest.fail(f"expert-parallel ranks still running after {SPAWN_DEADLINE_S} s")
    except (mp.ProcessRaisedException, mp.ProcessExitedException):
        errors = {r: out_dir / f"rank{r}.err" for r in range(world)}
        lines = [f"rank {r}: {path.read_text()}" for r, path in errors.items() if path.exists()]
        raise RuntimeError("; ".join(lines) or "a rank died without a Python exception") from None
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(world)]
