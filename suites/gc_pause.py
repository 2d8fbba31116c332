"""Python's cyclic garbage collector paused for a stretch of work: a collection scans every live object, so one
that falls inside a timed call, or among bulk work on many rows, costs in proportion to everything alive."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic collection inside; the caller's own setting is restored after."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
