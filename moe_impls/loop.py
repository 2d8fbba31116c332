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
        counts = routing.tokens_per_expert_E.tolist()  # the one host sync: where each expert's slice ends
        with torch.no_grad():
            order_N = torch.argsort(routing.expert_idx_N, stable=True)
        token_idx_N, weight_N = routing.token_idx_N[order_N], routing.weight_N[order_N]
        # Views taken once: indexing w[e] per expert would give each expert's backward a full-size zero
        # gradient of all E experts to add; unbind's backward stacks the E slices once.
        w_in_E, w_out_E = experts.w_in_EHD.unbind(0), experts.w_out_EDF.unbind(0)
        y_TD = x_TD.new_zeros(x_TD.shape, dtype=torch.float32)
        start = 0
        for e, count in enumerate(counts):
            if count:
                token_idx_n = token_idx_N[start : start + count]
                out_nD = expert_ffn(x_TD[token_idx_n], w_in_E[e], w_out_E[e], self.cfg.activation)
                y_TD.index_add_(0, token_idx_n, out_nD.float() * weight_N[start : start + count].unsqueeze(-1))
            start += count
        return y_TD, routing.token_idx_N.numel()
