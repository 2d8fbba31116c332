"""Loop over experts: gather each expert's tokens, run its FFN, and hand the outputs to the shared combine.

The textbook form (transformers' eager experts). One small matmul pair per active expert, so at small
token counts it is bound by kernel launches rather than arithmetic.
Legend: T tokens, D d_model, N assignments.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from moe_impls.dispatch import SortedDispatch, sort_by_expert
from moe_impls.experts import per_expert
from moe_impls.layer import MoELayer
from moe_impls.registry import register
from moe_impls.routing import Assignments


@register("loop")
class LoopMoE(MoELayer):
    def dispatch(self, x_TD: torch.Tensor, routing: Assignments) -> tuple[torch.Tensor, SortedDispatch]:
        """The tokens as they are: each expert gathers its own, as transformers' eager loop does."""
        return x_TD, sort_by_expert(x_TD, routing)

    def expert_outputs(self, x_TD: torch.Tensor, dispatch: SortedDispatch) -> torch.Tensor:
        experts = self.experts
        ends = dispatch.offsets_E.tolist()  # the one host sync: where each expert's segment ends
        counts = [end - start for start, end in zip([0, *ends], ends)]
        # Views taken once: indexing w[e] per expert would give each expert's backward a full-size zero
        # gradient of all E experts to add; unbind's backward stacks the E slices once.
        w_in_E, w_out_E = experts.w_in_EHD.unbind(0), experts.w_out_EDF.unbind(0)
        b_in_E, b_out_E = per_expert(experts.bias_in_EH, len(counts)), per_expert(experts.bias_out_ED, len(counts))
        token_idx_E = torch.split(dispatch.token_idx_N, counts)
        outs = [
            F.linear(experts.activate(F.linear(x_TD[token_idx_n], w_in_E[e], b_in_E[e])), w_out_E[e], b_out_E[e])
            for e, token_idx_n in enumerate(token_idx_E)
            if counts[e]
        ]
        return torch.cat(outs) if outs else x_TD.new_empty(0, x_TD.shape[1])  # no tokens, so no assignment
