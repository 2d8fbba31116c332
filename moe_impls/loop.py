"""Loop over experts: gather each expert's tokens, run its FFN, scatter-add the weighted output back.

The textbook form (transformers' eager experts). One small matmul pair per active expert, so at small
token counts it is bound by kernel launches rather than arithmetic.
"""

from __future__ import annotations

import torch

from moe_impls.experts import expert_ffn
from moe_impls.layer import MoELayer
from moe_impls.registry import register
from moe_impls.routing import RoutingRecord


@register("loop")
class LoopMoE(MoELayer):
    def compute_experts(self, x_TD: torch.Tensor, routing: RoutingRecord) -> tuple[torch.Tensor, int]:
        experts = self.weights.experts
        y_TD = x_TD.new_zeros(x_TD.shape, dtype=torch.float32)
        for e, count in enumerate(routing.tokens_per_expert_E.tolist()):  # one sync, to skip idle experts
            if count == 0:
                continue
            (sel_n,) = torch.where(routing.expert_idx_N == e)
            token_idx_n = routing.token_idx_N[sel_n]
            out_nD = expert_ffn(x_TD[token_idx_n], experts.w_in_EHD[e], experts.w_out_EDF[e], self.cfg.activation)
            y_TD.index_add_(0, token_idx_n, out_nD.float() * routing.weight_N[sel_n].unsqueeze(-1))
        return y_TD, routing.token_idx_N.numel()
