"""Capacity-padded batched: scatter assignments into an [E, C, D] buffer and run two batched matmuls.

C is the routing capacity when one is set (overflow was already dropped by the router, as in the Switch
Transformer), else the largest expert load (dropless). Every row of the buffer is computed, used or not:
`computed_rows` = E * C shows what the padding costs.
"""

from __future__ import annotations

import torch

from moe_impls.experts import activate, combine
from moe_impls.layer import MoELayer
from moe_impls.registry import register
from moe_impls.routing import RoutingRecord, position_in_expert


@register("padded")
class PaddedMoE(MoELayer):
    def compute_experts(self, x_TD: torch.Tensor, routing: RoutingRecord) -> tuple[torch.Tensor, int]:
        T, D = x_TD.shape
        E = self.cfg.num_experts
        experts = self.weights.experts
        capacity = self.cfg.capacity(T)
        if capacity is None:
            capacity = int(routing.tokens_per_expert_E.max()) if T else 0
        with torch.no_grad():
            slot_N = routing.expert_idx_N * capacity + position_in_expert(routing.expert_idx_N, E)
        buffer_ECD = (
            x_TD.new_zeros(E * capacity, D).index_copy(0, slot_N, x_TD[routing.token_idx_N]).view(E, capacity, D)
        )
        h_ECH = torch.bmm(buffer_ECD, experts.w_in_EHD.transpose(1, 2))
        out_ECD = torch.bmm(activate(h_ECH, self.cfg.activation), experts.w_out_EDF.transpose(1, 2))
        out_ND = out_ECD.view(E * capacity, D)[slot_N]
        return combine(T, routing.token_idx_N, out_ND, routing.weight_N), E * capacity
