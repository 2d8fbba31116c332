"""How a row that fails is recorded: what it may raise without ending the run, its status, its one-line error."""

from __future__ import annotations

import gc

import torch

import moe_impls

# What a row raises that fails the row, not the process: SystemExit too, so `sys.exit()` in an implementation
# is a recorded failure. KeyboardInterrupt is not caught: Ctrl-C stops the run.
ROW_FAILURES = (Exception, SystemExit)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


def is_oom(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or any(
        s in text for s in ("out of memory", "can't allocate memory", "cannot allocate memory")
    )


def failure_status(exc: BaseException) -> str:
    return "oom" if is_oom(exc) else "error"


def row_family(name: str) -> str:
    """`dense` for a dense baseline, `moe` for every implementation (built-in, peer, compiled or plug-in)."""
    return "dense" if name in moe_impls.DENSE_BASELINES else "moe"


def failed_row(base: dict, name: str, status: str, error: str) -> dict:
    """A row that never reached its figures: the point's columns, who it is, and why it failed."""
    return {**base, "impl": name, "family": row_family(name), "status": status, "error": error}


def release() -> None:
    """Frees what a failure left behind (frames, cached blocks), so it cannot crowd the next row."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
