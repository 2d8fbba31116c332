"""Expert parallelism: experts sharded over the ranks of a process group, tokens moved to them by all-to-all.

Legend: T tokens on this rank, D d_model, H first-projection width, E experts, L = E / R local experts,
R ranks, N assignments made by this rank's router, M rows this rank's experts compute (received from all ranks).

Rank r owns experts [r*L, (r+1)*L). Each forward on every rank:
  1. routing   the shared Router on this rank's own tokens (replicated router weights);
  2. dispatch  exchange per-expert counts (an even all-to-all of E int64), sort the N assignments by expert
               (which also groups them by owning rank), all-to-all the rows with uneven splits, and regroup
               the received rows (source-major) into local-expert-major segments;
  3. compute   the sort-and-group grouped matmuls over the L local experts (`SortGroupMoE.grouped_mm`);
  4. combine   the reverse all-to-all of the expert outputs, then the shared fp32 weighted `combine`.
Only the dispatch differs from `sort_group`; routing, expert math and combine are the shared functions.

Routing decisions that look at the whole batch are taken per rank: a capacity factor keeps
ceil(cf * T_rank * k / E) assignments per expert from each rank, and expert choice picks each expert's top
tokens among one rank's tokens (GShard's per-group capacity). The layer then equals `sort_group` run on each
rank's slice, and for dropless token choice it equals `sort_group` on the global batch. Noisy top-k draws its
training noise from a generator seeded `noise_seed + rank`, so ranks draw independent noise.

The uneven splits must be known on the host, so the counts exchange is followed by one device-to-host copy of
the counts (a synchronisation on CUDA); every expert-parallel MoE pays it unless it pads to a fixed capacity.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from moe_impls.experts import activate, combine
from moe_impls.routing import Router, RoutingRecord
from moe_impls.sort_group import SortGroupMoE
from moe_impls.weights import ExpertWeights, MoEWeights

STAGES = ("routing", "dispatch", "compute", "combine")


class ExpertShard(nn.Module):
    """The weights one rank keeps: the full router (replicated, as data parallel would) and L local experts.

    It has the attributes of `MoEWeights` that the layer and the Router read (`cfg`, `router`, `experts`,
    `dtype`, `device`), so `MoELayer` takes it in place of the full container. `from_full` copies the local
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
        if cfg.num_experts % world_size:
            raise ValueError(
                f"expert parallel: num_experts ({cfg.num_experts}) must be divisible by the world size ({world_size})"
            )
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
class EPSplit:
    """Seconds of one forward on one rank, by stage (see the module docstring for what each stage holds).

    Collectives wait for the slowest peer, so load imbalance and rank skew show up in dispatch and combine.
    """

    routing_s: float
    dispatch_s: float
    compute_s: float
    combine_s: float

    @property
    def total_s(self) -> float:
        return self.routing_s + self.dispatch_s + self.compute_s + self.combine_s


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


class _Clock:
    """Stage boundaries: CUDA events (one synchronize when read) on CUDA, perf_counter on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def seconds(self) -> list[float]:
        if self.cuda:
            self.marks[-1].synchronize()
            return [a.elapsed_time(b) / 1e3 for a, b in zip(self.marks, self.marks[1:])]
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


class ExpertParallelMoE(SortGroupMoE):
    """Sort-and-group MoE with experts sharded over `group`; every rank of the group must call forward together.

    Build it on every rank from the same full `MoEWeights` (same seed); it keeps an `ExpertShard` as
    `self.weights` and does not hold the full container, which the caller may drop. Gradients: the input's and
    the local experts' are complete on each rank; the router's is this rank's share, to be all-reduced across
    ranks as for any replicated parameter.

    profile=False (the default) records no timestamps: the plain path is what an end-to-end timer should see.
    profile=True marks the four stage boundaries (CUDA events and one synchronize at the end of the forward on
    CUDA, perf_counter on the CPU, where collectives return when done) and stores `last_split`. `last_traffic`
    is kept on every forward: the counts are on the host anyway to size the all-to-all.
    """

    name = "expert_parallel"  # not registered: it needs an initialised process group

    def __init__(self, weights: MoEWeights, group: dist.ProcessGroup | None = None, profile: bool = False) -> None:
        self.group = group if group is not None else dist.group.WORLD
        rank, world_size = dist.get_rank(self.group), dist.get_world_size(self.group)
        super().__init__(ExpertShard(weights, rank, world_size))
        self.rank, self.world_size = rank, world_size
        self.router = Router(dataclasses.replace(self.cfg, noise_seed=self.cfg.noise_seed + rank))
        self.profile = profile
        self.last_split: EPSplit | None = None
        self.last_traffic: EPTraffic | None = None
        self._clock: _Clock | None = None

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, RoutingRecord]:
        self._clock = _Clock(hidden.device) if self.profile else None
        self._mark()
        y, routing = super().forward(hidden)
        self._mark()
        if self._clock is not None:
            self.last_split = EPSplit(*self._clock.seconds())
            self._clock = None
        return y, routing

    def compute_experts(self, x_TD: torch.Tensor, routing: RoutingRecord) -> tuple[torch.Tensor, int]:
        """Returns the combined output [T, D] fp32 and M, the rows this rank's experts computed."""
        self._mark()
        R, L = self.world_size, self.weights.num_local_experts
        with torch.no_grad():
            order_N = torch.sort(routing.expert_idx_N, stable=True).indices
            token_idx_N = routing.token_idx_N[order_N]
            recv_counts_RL = torch.empty_like(routing.tokens_per_expert_E)
            dist.all_to_all_single(recv_counts_RL, routing.tokens_per_expert_E.contiguous(), group=self.group)
            recv_counts_RL = recv_counts_RL.view(R, L)
            send_R, recv_R = torch.stack(
                [routing.tokens_per_expert_E.view(R, L).sum(1), recv_counts_RL.sum(1)]
            ).tolist()
            regroup_M, offsets_L = self._regroup(recv_counts_RL)
        x_MD = _AllToAll.apply(x_TD[token_idx_N], send_R, recv_R, self.group)
        if regroup_M is not None:
            x_MD = x_MD[regroup_M]
        self._mark()
        experts = self.weights.experts
        h_MH = self.grouped_mm(x_MD, experts.w_in_EHD, offsets_L)
        out_MD = self.grouped_mm(activate(h_MH, self.cfg.activation), experts.w_out_EDF, offsets_L)
        self._mark()
        if regroup_M is not None:
            out_MD = out_MD[torch.argsort(regroup_M)]
        out_ND = _AllToAll.apply(out_MD, recv_R, send_R, self.group)
        self.last_traffic = EPTraffic(
            rank=self.rank,
            rows_sent_R=tuple(send_R),
            rows_received_R=tuple(recv_R),
            row_bytes=x_TD.shape[1] * x_TD.element_size(),
            counts_bytes_sent=(R - 1) * L * routing.tokens_per_expert_E.element_size(),
        )
        return combine(x_TD.shape[0], token_idx_N, out_ND, routing.weight_N[order_N]), out_MD.shape[0]

    @staticmethod
    def _regroup(recv_counts_RL: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Received rows come source-major, (rank, local expert); the grouped matmul wants expert-major.

        Returns the permutation to expert-major (None when there is one local expert, already in order) and
        the int32 end offsets of each local expert's segment.
        """
        R, L = recv_counts_RL.shape
        offsets_L = torch.cumsum(recv_counts_RL.sum(0), 0).to(torch.int32)
        if L == 1:
            return None, offsets_L
        local_expert_RL = torch.arange(L, device=recv_counts_RL.device).repeat(R)
        local_expert_M = torch.repeat_interleave(local_expert_RL, recv_counts_RL.reshape(-1))
        return torch.sort(local_expert_M, stable=True).indices, offsets_L

    def _mark(self) -> None:
        if self._clock is not None:
            self._clock.mark()
