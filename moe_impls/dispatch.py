"""The hand-off between dispatch and combine: where each row the experts compute came from, and its weight.

Legend: T tokens, D d_model, E experts, N rows handed to the experts (assignments, or every token-expert pair
for dense_all), in the order the experts' output rows come back.
An implementation's dispatch reorders (or pads, or repeats) the tokens and returns the rows plus a frozen
`Dispatch`; its expert compute returns one output row per dispatched row; `combine` is the one step that
weights those rows and scatters them back to their tokens, for every implementation.
Index bookkeeping runs under no_grad; the weights keep their graph to the router.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moe_impls.routing import Assignments


@dataclass(frozen=True)
class Dispatch:
    """What combine needs: row n of the experts' output belongs to token token_idx_N[n], weighted weight_N[n]."""

    num_tokens: int  # T: rows of the combined output
    token_idx_N: torch.Tensor  # int64, the token each output row goes back to
    weight_N: torch.Tensor  # fp32, the routing weight each output row is multiplied by
    computed_rows: int  # rows the expert matmuls compute: N, plus any padding rows they compute too


@dataclass(frozen=True)
class SortedDispatch(Dispatch):
    """Rows sorted by expert (stable): expert e's rows are one contiguous segment of tokens_per_expert_E[e]."""

    tokens_per_expert_E: torch.Tensor  # int64, on the device
    expert_idx_N: torch.Tensor  # int64, each row's expert (sorted): where a per-expert bias is gathered from

    def offsets_E(self) -> torch.Tensor:
        """int32 [E]: the end of each expert's segment, the `offs` that grouped_mm takes."""
        return torch.cumsum(self.tokens_per_expert_E, 0, dtype=torch.int32)


def sort_by_expert(x_TD: torch.Tensor, routing: Assignments) -> SortedDispatch:
    """The assignments ordered by expert (stable, so each expert keeps token order); no host sync."""
    with torch.no_grad():
        expert_idx_N, order_N = torch.sort(routing.expert_idx_N, stable=True)
        token_idx_N = routing.token_idx_N[order_N]
    return SortedDispatch(
        num_tokens=x_TD.shape[0],
        token_idx_N=token_idx_N,
        weight_N=routing.weight_N[order_N],
        computed_rows=token_idx_N.numel(),
        tokens_per_expert_E=routing.tokens_per_expert_E,
        expert_idx_N=expert_idx_N,
    )


def combine(out_ND: torch.Tensor, dispatch: Dispatch) -> torch.Tensor:
    """fp32 [T, D]: each output row times its routing weight, summed per token.

    The weights are applied in fp32 and summed in fp32, so low-precision runs lose no accuracy here.
    """
    y_TD = out_ND.new_zeros(dispatch.num_tokens, out_ND.shape[-1], dtype=torch.float32)
    return y_TD.index_add_(0, dispatch.token_idx_N, out_ND.float() * dispatch.weight_N.unsqueeze(-1))
