"""A plug-in that is right but slower in a way no timer sees reliably: one more host synchronisation per call.

`make_layer` wraps the built-in sort_group layer and reads the chosen experts back to the host before
returning (`.tolist()`), as a stray debugging line or a `float(loss)` would. Its output equals sort_group's exactly; the
counters gate (reports/counters_gate.py) must fail it on `host_syncs`.
"""

from __future__ import annotations

import torch
from torch import nn

import moe_impls
from moe_impls import MoEConfig, MoEWeights, RoutingRecord


class ExtraSync(nn.Module):
    def __init__(self, cfg: MoEConfig, weights: MoEWeights) -> None:
        super().__init__()
        self.inner = moe_impls.get("sort_group")(weights)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, RoutingRecord]:
        y, routing = self.inner(x)
        routing.expert_idx_TK.tolist()  # the planted sync: existing values, read and never used
        return y, routing


def make_layer(cfg: MoEConfig, weights: MoEWeights) -> nn.Module:
    return ExtraSync(cfg, weights)
