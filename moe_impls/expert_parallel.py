"""Expert parallelism: experts sharded over the ranks of a process group, tokens moved to them by all-to-all.

Legend: T tokens on this rank, D d_model, H first-projection width, E experts, L = E / R local experts,
R ranks, N assignments made by this rank's router, M rows this rank's experts compute (received from all ranks).

Rank r owns experts [r*L, (r+1)*L). Each forward on every rank runs four stages, each a method, so that an
instrument can time them from outside (the layer keeps no timing state); `forward` is their composition:
  1. `route`             the shared Router on this rank's own tokens (replicated router weights);
  2. `dispatch`          the dispatch exchange: per-expert counts (an even all-to-all of E int64), the N
                         assignments sorted by expert (which also groups them by owning rank), the rows
                         all-to-all'd with uneven splits, and the received rows (source-major) regrouped into
                         local-expert-major segments;
  3. `expert_outputs`    sort_group's own grouped matmuls, over the L local experts' segments;
  4. `combine_exchange`  the reverse all-to-all of the expert outputs, then the shared fp32 weighted `combine`.
Dispatch hands an `EPDispatch` (frozen) to the two later stages; it also carries the `EPTraffic` of the forward.
Only the dispatch (and its return trip) differs from `sort_group`; routing, expert math and combine are shared.

Routing decisions that look at the whole batch are taken per rank: a capacity factor keeps
ceil(cf * T_rank * k / E) assignments per expert from each rank, and expert choice picks each expert's top
tokens among one rank's tokens (GShard's per-group capacity). The layer then equals `sort_group` run on each
rank's slice, and for dropless token choice it equals `sort_group` on the global batch. Noisy top-k draws its
training noise from a generator seeded `noise_seed + rank`, so ranks draw independent noise.

The uneven splits must be known on the host, so the counts exchange is followed by one device-to-host copy of
the counts (a synchronisation on CUDA); every expert-parallel MoE pays it unless it pads to a fixed capacity.
It is the dispatch's only one: every size after it (the receive buffer, the regroup) is taken from those counts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from moe_impls.dispatch import SortedDispatch, combine
from moe_impls.layer import LayerRecord
from moe_impls.routing import Router, RoutingRecord
from moe_impls.sort_group import SortGroupMoE
from moe_impls.weights import ExpertWeights, MoEWeights


def world_size_problem(num_experts: int, world_size: int) -> str | None:
    """Why `num_experts` cannot be sharded evenly over `world_size` ranks, or None when it can.

    The one statement of which world sizes expert parallelism runs on: suite checks and the cost model ask it.
    """
    if num_experts % world_size:
        return f"num_experts ({num_experts}) must be divisible by the world size ({world_size})"
    return None


class ExpertShard(nn.Module):
    """The weights one rank keeps: the full router (replicated, as data parallel would) and L local experts.

    It has the attributes of `MoEWeights` that the layer and the Router read (`cfg`, `router`, `experts`,
    `dtype`, `device`), so `MoELayer` takes it in place of the full container. The constructor copies the local
    experts' slices into fresh tensors (not views), so once the caller drops the full `MoEWeights` only the
    shard stays resident: expert memory per rank is E_local / E of the full layer. The router module is the
    full container's own (shared, not copied): it is E x D, and sharing it keeps its gradient where a
    single-process layer on the same weights would put it. Building the full seeded container first is what
    makes every rank's shard bit-identical to the single-process weights; a deployment that loads a checkpoint
    would read only its slice instead.
    """

    def __init__(self, full: MoEWeights, rank: int, world_size: int) -> None:
        super().__init__()
        cfg = full.cfg
        why = world_size_problem(cfg.num_experts, world_size)
        if why:
            raise ValueError(f"expert parallel: {why}")
        local = cfg.num_experts // world_size
        self.cfg = cfg
        self.rank, self.world_size, self.num_local_experts = rank, world_size, local
        self.first_expert = rank * local
        self.router = full.router
        # ExpertWeights reads only the expert shape from its config; top_k is clamped so the config validates.
        local_cfg = dataclasses.replace(cfg, num_experts=local, top_k=min(cfg.top_k, local), synthetic=None)
        self.experts = ExpertWeights(local_cfg, full.device, full.dtype)
        with torch.no_grad():
            for name, p in self.experts.named_parameters():
                p.copy_(getattr(full.experts, name)[self.first_expert : self.first_expert + local])

    # MoEWeights' accessors read only `experts`, `parameters()` and `buffers()`, so they serve the shard as is:
    # expert_bytes counts the local experts, nbytes the router plus them (what this rank keeps resident).
    dtype = MoEWeights.dtype
    device = MoEWeights.device
    expert_bytes = MoEWeights.expert_bytes
    nbytes = MoEWeights.nbytes


@dataclass(frozen=True)
class EPTraffic:
    """What one rank moved in one forward. Rows are assignments (a token sent to k experts is k rows)."""

    rank: int
    rows_sent_R: tuple[int, ...]  # dispatch rows this rank sent to each rank (its own entry is a local copy)
    rows_received_R: tuple[int, ...]  # dispatch rows this rank received from each rank
    row_bytes: int  # D * element size: one row of hidden state, in the activation dtype
    counts_bytes_sent: int  # the per-expert count exchange, to other ranks (int64)

    @property
    def dispatch_bytes_sent(self) -> int:
        """Bytes that left this rank in the dispatch all-to-all (the self chunk is not counted)."""
        return (sum(self.rows_sent_R) - self.rows_sent_R[self.rank]) * self.row_bytes

    @property
    def combine_bytes_sent(self) -> int:
        """Bytes that left this rank in the combine all-to-all: its experts' outputs for other ranks' tokens."""
        return (sum(self.rows_received_R) - self.rows_received_R[self.rank]) * self.row_bytes


@dataclass(frozen=True)
class EPDispatch(SortedDispatch):
    """The dispatch exchange's hand-off (no gradients here), read in two directions.

    Expert compute reads the received side: the M rows this rank's experts compute, in segments ending at
    `offsets_E` (here [L], from the local experts' counts summed over the sending ranks), `computed_rows`
    = M. The combine exchange reads the sent side: `token_idx_N` and `weight_N1` are this rank's N assignments
    in the order they left (by expert, hence by owning rank), which is the order their outputs come back in.
    """

    regroup_M: torch.Tensor | None  # received (source-major) order -> local-expert-major; None with L = 1
    # expert_idx_N is the received side too: [M], each expert-major row's local expert
    traffic: EPTraffic  # the splits of both all-to-alls: rows_sent_R out and rows_received_R back

    @property
    def send_R(self) -> list[int]:
        return list(self.traffic.rows_sent_R)

    @property
    def recv_R(self) -> list[int]:
        return list(self.traffic.rows_received_R)


class _AllToAll(torch.autograd.Function):
    """Differentiable uneven all-to-all on dim 0: the backward is the same exchange with the splits swapped.

    torch 2.13 still ships `torch.distributed.nn.functional.all_to_all_single` but marks it deprecated (a
    FutureWarning) in favour of the private functional collectives; this is the same dozen lines, kept here.
    """

    @staticmethod
    def forward(ctx, x_ND, send_R: list[int], recv_R: list[int], group) -> torch.Tensor:
        ctx.send_R, ctx.recv_R, ctx.group = send_R, recv_R, group
        out_MD = x_ND.new_empty((sum(recv_R), *x_ND.shape[1:]))
        dist.all_to_all_single(out_MD, x_ND.contiguous(), recv_R, send_R, group=group)
        return out_MD

    @staticmethod
    def backward(ctx, grad_MD):
        return _AllToAll.apply(grad_MD.contiguous(), ctx.recv_R, ctx.send_R, ctx.group), None, None, None


class ExpertParallelMoE(SortGroupMoE):
    """Sort-and-group MoE with experts sharded over `group`; every rank of the group must call forward together.

    Build it on every rank from the same full `MoEWeights` (same seed); it keeps an `ExpertShard` as
    `self.weights` and does not hold the full container, which the caller may drop. Gradients: the input's and
    the local experts' are complete on each rank; the router's is this rank's share, to be all-reduced across
    ranks as for any replicated parameter. The four stage methods, called in order, are the forward.
    """

    name = "expert_parallel"  # not registered: it needs an initialised process group

    def __init__(self, weights: MoEWeights, group: dist.ProcessGroup | None = None) -> None:
        self.group = group if group is not None else dist.group.WORLD
        rank, world_size = dist.get_rank(self.group), dist.get_world_size(self.group)
        super().__init__(ExpertShard(weights, rank, world_size))
        self.rank, self.world_size = rank, world_size
        self.router = Router(dataclasses.replace(self.cfg, noise_seed=self.cfg.noise_seed + rank))

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, LayerRecord]:
        """[..., D] -> ([..., D], the routing record with M, the rows this rank's experts computed)."""
        x_TD, routing = self.route(hidden)
        x_MD, sent = self.dispatch(x_TD, routing)
        y_TD = self.combine_exchange(self.expert_outputs(x_MD, sent), sent)
        return y_TD.view(hidden.shape), LayerRecord.from_routing(routing, sent.computed_rows)

    def route(self, hidden: torch.Tensor) -> tuple[torch.Tensor, RoutingRecord]:
        """Stage 1: the input checked and flattened to x_TD, and this rank's routing of it."""
        self._check_input(hidden)
        x_TD = hidden.reshape(-1, self.cfg.d_model)
        return x_TD, self.router(self.weights, x_TD, self.training)

    def dispatch(self, x_TD: torch.Tensor, routing: RoutingRecord) -> tuple[torch.Tensor, EPDispatch]:
        """Stage 2, the dispatch exchange: x_MD, the rows this rank's experts compute (local-expert-major)."""
        R, L = self.world_size, self.weights.num_local_experts
        tokens_per_expert_E = routing.tokens_per_expert_E
        with torch.no_grad():
            order_N = torch.sort(routing.expert_idx_N, stable=True).indices
            recv_counts_RL = torch.empty_like(tokens_per_expert_E)
            dist.all_to_all_single(recv_counts_RL, tokens_per_expert_E.contiguous(), group=self.group)
            recv_counts_RL = recv_counts_RL.view(R, L)
            send_R, recv_R = torch.stack([tokens_per_expert_E.view(R, L).sum(1), recv_counts_RL.sum(1)]).tolist()
            regroup_M, local_expert_M = self._regroup(recv_counts_RL, sum(recv_R))
        token_idx_N, weight_N1 = routing.in_order(order_N)
        x_MD = _AllToAll.apply(x_TD[token_idx_N], send_R, recv_R, self.group)
        if regroup_M is not None:
            x_MD = x_MD[regroup_M]
        traffic = EPTraffic(
            rank=self.rank,
            rows_sent_R=tuple(send_R),
            rows_received_R=tuple(recv_R),
            row_bytes=x_TD.shape[1] * x_TD.element_size(),
            counts_bytes_sent=(R - 1) * L * tokens_per_expert_E.element_size(),
        )
        sent = EPDispatch(
            num_tokens=x_TD.shape[0],
            token_idx_N=token_idx_N,
            weight_N1=weight_N1,
            computed_rows=x_MD.shape[0],
            offsets_E=torch.cumsum(recv_counts_RL.sum(0), 0, dtype=torch.int32),
            expert_idx_N=local_expert_M,
            regroup_M=regroup_M,
            traffic=traffic,
        )
        return x_MD, sent

    # Stage 3 is sort_group's `expert_outputs`: out_MD, each received row through its local expert's FFN.

    def combine_exchange(self, out_MD: torch.Tensor, sent: EPDispatch) -> torch.Tensor:
        """Stage 4: y_TD in the weights' dtype, the outputs sent back to their tokens' ranks, weighted in fp32."""
        if sent.regroup_M is not None:
            out_MD = out_MD[torch.argsort(sent.regroup_M)]
        out_ND = _AllToAll.apply(out_MD, sent.recv_R, sent.send_R, self.group)
        return combine(out_ND, sent).to(self.weights.dtype)

    @staticmethod
    def _regroup(recv_counts_RL: torch.Tensor, rows_received: int) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Received rows come source-major, (rank, local expert); the grouped matmul wants expert-major.

        Returns the permutation to expert-major (None when there is one local expert: already in order) and each
        expert-major row's local expert. `rows_received` (M, read on the host with the splits) sizes the
        expansion, so it reads nothing back.
        """
        R, L = recv_counts_RL.shape
        if L == 1:
            return None, torch.zeros(rows_received, dtype=torch.int64, device=recv_counts_RL.device)
        local_expert_RL = torch.arange(L, device=recv_counts_RL.device).repeat(R)
        local_expert_M = torch.repeat_interleave(local_expert_RL, recv_counts_RL.reshape(-1), output_size=rows_received)
        in_order, regroup_M = torch.sort(local_expert_M, stable=True)
        return regroup_M, in_order
