"""Every expert on every token, masked by the gates: O(E) work, no sparsity at all.

The reference that tests compare against, and a benchmark row for what sparsity saves. Its dispatch hands
the experts every token once per expert (expert-major, the tokens themselves, no copy); the rows a token was
not routed to carry weight 0 in combine.
Legend: T tokens, D d_model, H first-projection width, E experts.
"""

from __future__ import annotations

import torch

from moe_impls.dispatch import Dispatch
from moe_impls.experts import add_bias, batched_linear
from moe_impls.layer import MoELayer
from moe_impls.registry import register
from moe_impls.routing import RoutingRecord


@register("dense_all")
class DenseAllMoE(MoELayer):
    @property
    def capturable(self) -> bool:
        return self.routing_capturable

    def dispatch(self, x_TD: torch.Tensor, routing: RoutingRecord) -> tuple[torch.Tensor, Dispatch]:
        T, E = x_TD.shape[0], self.cfg.num_experts
        with torch.no_grad():
            token_idx_N = torch.arange(T, device=x_TD.device).repeat(E)
        weight_N1 = routing.gates_TE.t().reshape(-1, 1)
        return x_TD, Dispatch(num_tokens=T, token_idx_N=token_idx_N, weight_N1=weight_N1, computed_rows=E * T)

    def expert_outputs(self, x_TD: torch.Tensor, dispatch: Dispatch) -> torch.Tensor:
        experts = self.experts
        x_ETD = x_TD.expand(self.cfg.num_experts, -1, -1)
        h_ETH = add_bias(batched_linear(x_ETD, experts.w_in_EHD), experts.bias_in_EH)
        out_ETD = add_bias(batched_linear(experts.activate(h_ETH), experts.w_out_EDF), experts.bias_out_ED)
        return out_ETD.reshape(-1, x_TD.shape[-1])
