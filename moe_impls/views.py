"""Views of parameters kept from one call to the next while autograd is off.

A view is an ATen op like any other on the host: about 2 µs on CPU, where a decode forward takes ~100 µs and
needs three (the router's weight and both expert projections, transposed). With autograd on, a view is made in
each call, so that its backward belongs to that call's graph; under torch.compile too (the compiled graph makes
its own).
"""

from __future__ import annotations

import torch


class KeptViews:
    """One kept view per name. A kept view is used only while it is still a view of that very tensor's memory:
    a parameter reassigned (load_state_dict(assign=True)) or moved (`.to`, which replaces `.data`) makes it anew.
    The tensor is kept beside its view, since a view of a view (a weight shard) has the first one's base."""

    def __init__(self) -> None:
        self._views: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def transposed(self, name: str, w: torch.Tensor) -> torch.Tensor:
        """w with its last two dims swapped."""
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return w.transpose(-2, -1)
        kept = self._views.get(name)
        if kept is None or kept[0] is not w or kept[1].data_ptr() != w.data_ptr():
            kept = self._views[name] = (w, w.transpose(-2, -1))
        return kept[1]
