"""Every expert on every token, masked by the gates: O(E) work, no dispatch at all.

The reference that tests compare against, and a benchmark row for what sparsity saves.
"""

from __future__ import annotations

import torch

from moe_impls.experts import activate
from moe_impls.layer import MoELayer
from moe_impls.registry import register
from moe_impls.routing import RoutingRecord


@register("dense_all")
class DenseAllMoE(MoELayer):
    @property
    def capturable(self) -> bool:
        return self.routing_capturable

    def compute_experts(self, x_TD: torch.Tensor, routing: RoutingRecord) -> tuple[torch.Tensor, int]:
        experts = self.weights.experts
        h_ETH = torch.matmul(x_TD, experts.w_in_EHD.transpose(1, 2))
        out_ETD = torch.matmul(activate(h_ETH, self.cfg.activation), experts.w_out_EDF.transpose(1, 2))
        y_TD = torch.einsum("etd,te->td", out_ETD.float(), routing.gates_TE)
        return y_TD, self.cfg.num_experts * x_TD.shape[0]
