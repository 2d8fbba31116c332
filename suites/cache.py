"""How many copies of a row's weights and input make every call cold on this machine.

A call is cold when everything it reads was evicted since its last use. Rotating over n copies puts the
other n - 1 copies' bytes between two uses of one copy; once those exceed twice the last-level cache (LLC),
the copy is gone from it, whatever the replacement policy. A row whose working set alone exceeds twice the
LLC is cold with one copy. The copies' memory is bounded: past the bound the point is timed with as many
copies as fit, and says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

SYSFS_CACHE = Path("/sys/devices/system/cpu/cpu0/cache")
FALLBACK_LLC_BYTES = 32 * 2**20  # when the machine does not say: a typical server L3 slice
MAX_COPIES = 64  # past this, building and rotating copies costs more than the tiny row is worth: partly cold


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
    """Copies for one pool of rows (the MoE rows share one, each dense baseline has its own)."""

    copies: int
    note: str | None  # why the point is not fully cold, else None


def plan_copies(working_set_bytes: int, llc_bytes: int, budget_bytes: int) -> ColdPlan:
    """The fewest copies whose other copies span twice the LLC, bounded by `budget_bytes` of extra copies."""
    if working_set_bytes <= 0:
        return ColdPlan(1, None)
    wanted = 1 + math.ceil(2 * llc_bytes / working_set_bytes) if working_set_bytes < 2 * llc_bytes else 1
    affordable = min(MAX_COPIES, 1 + budget_bytes // working_set_bytes)
    if wanted <= affordable:
        return ColdPlan(wanted, None)
    why = "fit in cold_max_mb" if affordable < MAX_COPIES else f"are built (at most {MAX_COPIES})"
    return ColdPlan(
        affordable,
        f"partly cold: {affordable} of the {wanted} copies needed to span 2 x the {llc_bytes / 2**20:.0f} MiB LLC "
        f"{why}",
    )
