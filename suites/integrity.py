"""Did a row change the tensors every row of its point shares? A content fingerprint, before and after.

Version counters miss writes through `.data` or a detached alias, so the check reads the contents: two
integer sums of the raw bits per tensor, one of them position-weighted so that swapped values show too.
Computed in chunks on the tensor's own device, so a large GPU layer needs no host copy and little workspace.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CHUNK = 1 << 22
_INT_VIEW = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _digest(t: torch.Tensor) -> tuple[int, int]:
    flat = t.detach().reshape(-1)
    bits = flat.view(_INT_VIEW[flat.element_size()]) if flat.is_floating_point() else flat
    plain = weighted = torch.zeros((), dtype=torch.int64, device=t.device)
    for start in range(0, bits.numel(), CHUNK):
        chunk = bits[start : start + CHUNK].long()
        position = torch.arange(start, start + chunk.numel(), device=t.device) % 65521 + 1
        plain = plain + chunk.sum()
        weighted = weighted + (chunk * position).sum()
    return int(plain), int(weighted)


def _fingerprint(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[int, int]]:
    return {name: _digest(t) for name, t in tensors.items() if t is not None}


def _changed(before: dict[str, tuple[int, int]], tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the tensors whose contents differ from `before`."""
    after = _fingerprint(tensors)
    return [name for name in before if after.get(name) != before[name]]


@dataclass(frozen=True)
class SharedTensors:
    """The tensors every row of a point shares, by name, and their fingerprint while they were clean."""

    tensors: dict[str, torch.Tensor]
    clean: dict[str, tuple[int, int]]

    @classmethod
    def of(cls, tensors: dict[str, torch.Tensor]) -> SharedTensors:
        return cls(tensors, _fingerprint(tensors))

    def changed(self) -> list[str]:
        """Names of the shared tensors that differ from their clean contents."""
        return _changed(self.clean, self.tensors)
