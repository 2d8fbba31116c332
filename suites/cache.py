"""How every call of a row finds its data out of cache on this machine: copies, and reads that make up for them.

A call is cold when everything it reads was evicted since its last use. Rotating over n copies puts the
other n - 1 copies' bytes between two uses of one copy; once those exceed twice the last-level cache (LLC),
the copy is gone from it, whatever the replacement policy. A row whose working set alone exceeds twice the
LLC is cold with one copy. The copies' memory is bounded (cold_max_mb, MAX_COPIES): where the copies that fit
span less than twice the LLC, each call is preceded by a read of the next slice of an eviction buffer twice
the LLC's size, enough that the reads and the copies together span it. A 480 MiB LLC needed 321 copies of
a 3 MiB FFN; with the 64 that were built and no reads, the FFN at one token ran 5-14% faster timed alone
than beside its neighbours, whose copies did the evicting its own could not.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

SYSFS_CACHE = Path("/sys/devices/system/cpu/cpu0/cache")
FALLBACK_LLC_BYTES = 32 * 2**20  # when the machine does not say: a typical server L3 slice
MAX_COPIES = 64  # past this, building copies costs more than the tiny row is worth: eviction reads do the rest


def last_level_cache_bytes(device: torch.device) -> tuple[int, str]:
    """Size of the largest data cache the device's calls go through, and where the figure came from."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).L2_cache_size, "cuda L2_cache_size"
    best = 0
    for index in sorted(SYSFS_CACHE.glob("index*")):
        try:
            if (index / "type").read_text().strip() == "Instruction":
                continue
            best = max(best, _parse_size((index / "size").read_text()))
        except (OSError, ValueError):
            continue
    if best:
        return best, f"sysfs {SYSFS_CACHE}"
    return FALLBACK_LLC_BYTES, "unknown; assumed 32 MiB"


def _parse_size(text: str) -> int:
    """'32768K' -> 33554432."""
    text = text.strip().upper()
    scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * scale


@dataclass(frozen=True)
class ColdPlan:
    """Copies for one pool of rows (the MoE rows share one, each dense baseline has its own), and the bytes of
    the eviction buffer read before each call where those copies alone do not span twice the LLC."""

    copies: int
    read_bytes: int = 0


def plan_copies(working_set_bytes: int, llc_bytes: int, budget_bytes: int) -> ColdPlan:
    """The fewest copies whose other copies span twice the LLC, bounded by `budget_bytes` of extra copies and
    MAX_COPIES; past the bound, the read before each call that makes up the rest of the span."""
    if working_set_bytes <= 0 or working_set_bytes >= 2 * llc_bytes:
        return ColdPlan(1)
    wanted = 1 + math.ceil(2 * llc_bytes / working_set_bytes)
    copies = min(wanted, MAX_COPIES, 1 + budget_bytes // working_set_bytes)
    if copies == wanted:
        return ColdPlan(copies)
    if copies == 1:
        return ColdPlan(1, 2 * llc_bytes)  # no copy fits: a whole flush before each call, as on CUDA
    return ColdPlan(copies, math.ceil(2 * llc_bytes / (copies - 1)) - working_set_bytes)


class Eviction:
    """A buffer of twice the LLC, read a slice at a time round-robin outside the timed region: a slice is read
    again only after the whole buffer, so every read brings lines from memory and evicts as many. Built at its
    first read (most points on a machine with a small LLC need none) and kept for the worker's life."""

    def __init__(self, llc_bytes: int) -> None:
        self.span = 2 * llc_bytes // 4  # float32 elements
        self._buffer: torch.Tensor | None = None
        self._at = 0

    def reader(self, nbytes: int) -> Callable[[], None] | None:
        """What to run before each call of a row whose plan reads `nbytes`; None when it reads nothing."""
        return partial(self.read, nbytes) if nbytes > 0 else None

    def read(self, nbytes: int) -> None:
        if self._buffer is None:
            self._buffer = torch.ones(self.span)  # written once: untouched pages would all read one zero page
        left = min(nbytes // 4, self.span)
        while left:
            n = min(left, self.span - self._at)
            self._buffer[self._at : self._at + n].sum()
            self._at, left = (self._at + n) % self.span, left - n
