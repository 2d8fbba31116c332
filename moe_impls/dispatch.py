"""The hand-off between dispatch and combine: where each row the experts compute came from, and its weight.

Legend: T tokens, D d_model, E experts, N rows handed to the experts (assignments, or every token-expert pair
for dense_all), in the order the experts' output rows come back.
An implementation's dispatch reorders (or pads, or repeats) the tokens and returns the rows plus a frozen
`Dispatch`; its expert compute returns one output row per dispatched row; `combine` is the one step that
weights those rows and scatters them back to their tokens, for every implementation.
Index bookkeeping is integer tensors, which autograd never records; the weights keep their graph to the router.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from moe_impls.routing import Assignments


@dataclass(frozen=True)
class Dispatch:
    """What combine needs: row n of the experts' output belongs to token token_idx_N[n], weighted weight_N1[n]."""

    num_tokens: int  # T: rows of the combined output
    token_idx_N: torch.Tensor  # int64, the token each output row goes back to
    weight_N1: torch.Tensor  # fp32 [N, 1], the routing weight each output row is multiplied by
    computed_rows: int  # rows the expert matmuls compute: N, plus any padding rows they compute too


@dataclass(frozen=True)
class SortedDispatch(Dispatch):
    """Rows sorted by expert (stable): expert e's rows are one contiguous segment, ending at offsets_E[e]."""

    offsets_E: torch.Tensor  # int32 [E], on the device: the `offs` that grouped_mm takes
    expert_idx_N: torch.Tensor  # int64, each row's expert (sorted): where a per-expert bias is gathered from


@functools.cache
def _expert_ids(num_experts: int, device: torch.device) -> torch.Tensor:
    """0..E-1 on `device`, made once: the values whose sorted positions are the segment ends."""
    return torch.arange(num_experts, device=device)


def sort_by_expert(x_TD: torch.Tensor, routing: Assignments) -> SortedDispatch:
    """The assignments ordered by expert (stable, so each expert keeps token order); no host sync.

    The segment ends come from one binary search of the sorted experts, not from counting per expert and a
    cumulative sum: three fewer launches per call.
    """
    expert_idx_N, order_N = torch.sort(routing.expert_idx_N, stable=True)
    E, device = routing.num_experts, expert_idx_N.device
    ids_E = torch.arange(E, device=device) if torch.compiler.is_compiling() else _expert_ids(E, device)
    offsets_E = torch.searchsorted(expert_idx_N, ids_E, right=True, out_int32=True)
    token_idx_N, weight_N1 = routing.in_order(order_N)
    return SortedDispatch(
        num_tokens=x_TD.shape[0],
        token_idx_N=token_idx_N,
        weight_N1=weight_N1,
        computed_rows=token_idx_N.numel(),
        offsets_E=offsets_E,
        expert_idx_N=expert_idx_N,
    )


def combine(out_ND: torch.Tensor, dispatch: Dispatch) -> torch.Tensor:
    """fp32 [T, D]: each output row times its routing weight, summed per token.

    The weights are applied in fp32 and summed in fp32, so low-precision runs lose no accuracy here.
    """
    y_TD = out_ND.new_zeros(dispatch.num_tokens, out_ND.shape[-1], dtype=torch.float32)
    return y_TD.index_add_(0, dispatch.token_idx_N, out_ND.float() * dispatch.weight_N1)
