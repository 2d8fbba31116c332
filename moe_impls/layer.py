"""The MoE layer every implementation shares: route, dispatch, compute the experts, combine, restore the shape.

An implementation subclasses `MoELayer` and overrides only `dispatch` and `expert_outputs`; routing, weights
and the fp32 `combine` (moe_impls/dispatch.py) are shared, so two rows of a benchmark differ in nothing else.
An implementation whose experts combine for themselves (transformers' peers) overrides `compute_experts`.
Legend: T tokens, D d_model, E experts, N rows handed to the experts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from moe_impls.config import MoEConfig
from moe_impls.dispatch import Dispatch, combine
from moe_impls.routing import Assignments, Router, RoutingRecord
from moe_impls.weights import ExpertWeights, MoEWeights, plain_children


@dataclass(frozen=True, kw_only=True)
class LayerRecord(RoutingRecord):
    """What a layer's forward returns beside its output: the router's record and the rows its experts computed."""

    computed_rows: int | None  # padding and dense_all's idle rows included; None where a plug-in does not say

    @classmethod
    def from_routing(cls, routing: RoutingRecord, computed_rows: int | None) -> LayerRecord:
        return cls(**{name: getattr(routing, name) for name in _ROUTING_FIELDS}, computed_rows=computed_rows)


_ROUTING_FIELDS = tuple(f.name for f in dataclasses.fields(RoutingRecord))


class MoELayer(nn.Module):
    name: ClassVar[str] = "abstract"

    def __init__(self, weights: MoEWeights) -> None:
        super().__init__()
        self.cfg = weights.cfg
        self.weights = weights  # a shared submodule: every layer built on it trains and times the same tensors
        self.router = Router(weights.cfg)
        plain_children(self)

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, LayerRecord]:
        """[..., D] -> ([..., D], the routing record with the rows the experts computed)."""
        self._check_input(hidden)
        flat = hidden.dim() == 2  # [T, D] already: no reshape either way (each is an op, and decode has few)
        x_TD = hidden if flat else hidden.reshape(-1, self.cfg.d_model)
        routing = self.router(self.weights, x_TD, self.training)
        y_TD, computed_rows = self.compute_experts(x_TD, routing)
        if y_TD.dtype != hidden.dtype:  # the fp32 combine of a low-precision run
            y_TD = y_TD.to(hidden.dtype)
        return y_TD if flat else y_TD.view(hidden.shape), LayerRecord.from_routing(routing, computed_rows)

    @property
    def routing_capturable(self) -> bool:
        """The router reads nothing back to the host: no synthetic override (a host-side table is copied in) and,
        for token choice, no capacity (its drops are a boolean mask of data-dependent size)."""
        cfg = self.cfg
        return cfg.synthetic is None and (cfg.capacity_factor is None or cfg.router == "expert_choice")

    @property
    def capturable(self) -> bool:
        """Whether forward never reads a device value back to the host, so a CUDA graph can record and replay it.

        False unless an implementation knows better: the timer then times it eagerly rather than risk a capture
        that fails half-way.
        """
        return False

    @property
    def experts(self) -> ExpertWeights:
        """The experts' weights and math (moe_impls/weights.py ExpertWeights, or a transformers module's view)."""
        return self.weights.experts

    def compute_experts(self, x_TD: torch.Tensor, routing: Assignments) -> tuple[torch.Tensor, int]:
        """The combined expert output [T, D] (fp32 or the input dtype) and the rows the matmuls computed."""
        rows, dispatch = self.dispatch(x_TD, routing)
        return combine(self.experts.finish(self.expert_outputs(rows, dispatch)), dispatch), dispatch.computed_rows

    def dispatch(self, x_TD: torch.Tensor, routing: Assignments) -> tuple[torch.Tensor, Dispatch]:
        """The rows the experts take, in the layout `expert_outputs` wants, and where each output row goes back."""
        raise NotImplementedError

    def expert_outputs(self, rows: torch.Tensor, dispatch: Dispatch) -> torch.Tensor:
        """[N, D]: one expert output row per row of `dispatch`, in its order (un-padded), for `combine`."""
        raise NotImplementedError

    @classmethod
    def unsupported(cls, cfg: MoEConfig) -> str | None:
        """Why this implementation cannot compute `cfg` (the benchmark then skips it), or None when it can."""
        return None

    @classmethod
    def predicted_bytes(cls, cfg: MoEConfig, tokens: int, dtype: torch.dtype, mode: str) -> int | None:
        """Bytes one call allocates beyond weights and input, for those whose footprint could take a machine down.

        None (the default) means not predicted: the runner then simply runs it and records an out-of-memory.
        """
        return None

    def _check_input(self, hidden: torch.Tensor) -> None:
        """One line naming what is wrong; on the hot path only three comparisons (a decode call is microseconds)."""
        w = self.experts.w_out_EDF
        if (
            hidden.dim()
            and hidden.shape[-1] == self.cfg.d_model
            and hidden.dtype == w.dtype
            and hidden.device == w.device
        ):
            return
        where = f"{type(self).__name__}({self.name})"
        if hidden.dim() == 0 or hidden.shape[-1] != self.cfg.d_model:
            raise ValueError(f"{where}: expected hidden states [..., {self.cfg.d_model}], got {tuple(hidden.shape)}")
        if hidden.dtype != w.dtype:
            raise ValueError(f"{where}: expected dtype {w.dtype} (the weights'), got {hidden.dtype}")
        raise ValueError(f"{where}: expected device {w.device} (the weights'), got {hidden.device}")
