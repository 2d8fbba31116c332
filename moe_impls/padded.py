"""Capacity-padded batched: scatter assignments into an [E, C, D] buffer and run two batched matmuls.

C is the routing capacity when one is set (overflow was already dropped by the router, as in the Switch
Transformer), else the largest expert load (dropless). Every row of the buffer is computed, used or not:
`computed_rows` = E * C shows what the padding costs.
Legend: T tokens, D d_model, H first-projection width, E experts, C capacity, N assignments.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moe_impls.dispatch import Dispatch
from moe_impls.experts import add_bias, batched_linear
from moe_impls.layer import MoELayer
from moe_impls.registry import register
from moe_impls.routing import Assignments, position_in_expert


@dataclass(frozen=True)
class PaddedDispatch(Dispatch):
    """Assignments in routing order; assignment n sits in row slot_N[n] of the flattened [E * C] buffer."""

    slot_N: torch.Tensor  # int64


@register("padded")
class PaddedMoE(MoELayer):
    def dispatch(self, x_TD: torch.Tensor, routing: Assignments) -> tuple[torch.Tensor, PaddedDispatch]:
        T, D = x_TD.shape
        E = self.cfg.num_experts
        capacity = self.cfg.capacity(T)
        if capacity is None:
            capacity = int(routing.tokens_per_expert_E.max()) if T else 0
        token_idx_N, expert_idx_N = routing.token_idx_N, routing.expert_idx_N  # derived on each read: read once
        with torch.no_grad():
            slot_N = expert_idx_N * capacity + position_in_expert(expert_idx_N, E)
        buffer_ECD = x_TD.new_zeros(E * capacity, D).index_copy(0, slot_N, x_TD[token_idx_N]).view(E, capacity, D)
        dispatch = PaddedDispatch(T, token_idx_N, routing.weight_N.unsqueeze(-1), E * capacity, slot_N)
        return buffer_ECD, dispatch

    def expert_outputs(self, buffer_ECD: torch.Tensor, dispatch: PaddedDispatch) -> torch.Tensor:
        experts = self.experts
        h_ECH = add_bias(batched_linear(buffer_ECD, experts.w_in_EHD), experts.bias_in_EH)
        out_ECD = add_bias(batched_linear(experts.activate(h_ECH), experts.w_out_EDF), experts.bias_out_ED)
        return out_ECD.view(dispatch.computed_rows, out_ECD.shape[-1])[dispatch.slot_N]
