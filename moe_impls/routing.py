"""Routers shared by every implementation, and the routing record they hand to dispatch.

Legend: T tokens, D d_model, E experts, K top_k, N assignments that experts compute (after capacity drops).
Every router ends in the same flat form, (token_idx_N, expert_idx_N, weight_N), which is all that
dispatch needs; token choice also keeps its per-token view (expert_idx_TK, weight_TK).
Index bookkeeping runs under no_grad; the weights keep their graph to the router.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from moe_impls.config import MoEConfig, SyntheticRouting
from moe_impls.weights import MoEWeights


@dataclass(frozen=True)
class Assignments:
    """Which expert computes each assignment and its weight: all that dispatch and combine read, whether our
    router decided it or a transformers model's own (`from_top_k`)."""

    token_idx_N: torch.Tensor  # int64
    expert_idx_N: torch.Tensor  # int64
    weight_N: torch.Tensor  # fp32, multiplies expert output in combine
    tokens_per_expert_E: torch.Tensor  # int64, assignments each expert computes

    @classmethod
    def from_top_k(cls, expert_idx_TK: torch.Tensor, weight_TK: torch.Tensor, num_experts: int) -> Assignments:
        """Every token's K choices, token by token (as our token-choice router orders them); no host sync."""
        with torch.no_grad():
            T, K = expert_idx_TK.shape
            token_idx_N = torch.arange(T * K, device=expert_idx_TK.device) // K
            expert_idx_N = expert_idx_TK.reshape(-1).long()
            counts_E = count_per_expert(expert_idx_N, num_experts)
        return cls(token_idx_N, expert_idx_N, weight_TK.reshape(-1).float(), counts_E)


@dataclass(frozen=True)
class RoutingRecord(Assignments):
    """What the router decided for one forward, plus what the balance statistics and losses need."""

    num_dropped: torch.Tensor  # int64 scalar, assignments dropped by capacity
    logits_TE: torch.Tensor  # fp32 router logits (noisy top-k: the noisy logits H)
    probs_TE: torch.Tensor  # fp32 router probabilities (sigmoid top-k: the sigmoid scores)
    expert_idx_TK: torch.Tensor | None = None  # token choice: chosen experts before capacity drops
    weight_TK: torch.Tensor | None = None
    clean_logits_TE: torch.Tensor | None = None  # noisy top-k only: x W_g
    noise_std_TE: torch.Tensor | None = None  # noisy top-k only: softplus(x W_noise); None in eval

    @property
    def num_tokens(self) -> int:
        return self.logits_TE.shape[0]

    @property
    def num_experts(self) -> int:
        return self.logits_TE.shape[1]

    @property
    def gates_TE(self) -> torch.Tensor:
        """Dense [T, E] gate matrix: a token's weight for each expert, zero where it was not sent."""
        gates = self.weight_N.new_zeros(self.num_tokens, self.num_experts)
        return gates.index_put((self.token_idx_N, self.expert_idx_N), self.weight_N, accumulate=True)


def topk_priority_keep(expert_idx_TK: torch.Tensor, num_experts: int, capacity: int) -> torch.Tensor:
    """Bool [T, K]: which assignments fit in `capacity` slots per expert.

    Priority is choice-major (every token's first choice before any second choice), then token order,
    as in GShard and the Switch Transformer: overflow past the capacity is dropped.
    """
    T, K = expert_idx_TK.shape
    choice_major_N = expert_idx_TK.t().reshape(-1)
    return (position_in_expert(choice_major_N, num_experts) < capacity).view(K, T).t()


def count_per_expert(expert_idx_N: torch.Tensor, num_experts: int) -> torch.Tensor:
    """int64 [E]: assignments per expert. A scatter-add, not bincount: bincount reads its input's maximum back to
    the host on CUDA, which would stall every call and make the layer impossible to capture in a CUDA graph."""
    idx_N = expert_idx_N if expert_idx_N.dim() == 1 else expert_idx_N.reshape(-1)
    counts_E = torch.zeros(num_experts, dtype=torch.long, device=idx_N.device)
    return counts_E.scatter_add_(0, idx_N, torch.ones_like(idx_N))


def position_in_expert(expert_idx_N: torch.Tensor, num_experts: int) -> torch.Tensor:
    """int64 [N]: how many earlier assignments (in N order) went to the same expert; its slot in that expert."""
    order_N = torch.sort(expert_idx_N, stable=True).indices
    counts_E = count_per_expert(expert_idx_N, num_experts)
    starts_E = torch.cumsum(counts_E, 0) - counts_E
    position_N = torch.empty_like(expert_idx_N)
    position_N[order_N] = (
        torch.arange(expert_idx_N.numel(), device=expert_idx_N.device) - starts_E[expert_idx_N[order_N]]
    )
    return position_N


@functools.lru_cache(maxsize=64)
def synthetic_expert_idx(num_tokens: int, num_experts: int, top_k: int, spec: SyntheticRouting) -> torch.Tensor:
    """[T, K] int64 choice of experts whose per-expert load follows `spec`, each token's K experts distinct.

    Loads are integers summing to T*K, none above T. They are laid out expert-major and folded into [K, T],
    so one expert's contiguous block never hits a token twice; tokens are then shuffled with the seed.
    """
    T, E, K = num_tokens, num_experts, top_k
    ranks = torch.arange(E, dtype=torch.float64)
    share = {
        "uniform": torch.ones(E, dtype=torch.float64),
        "zipf": (ranks + 1) ** -spec.zipf_s,
        "hot": torch.where(ranks == 0, spec.hot_fraction, (1 - spec.hot_fraction) / max(E - 1, 1)),
        "collapse": (ranks < K).double(),
    }[spec.kind]
    if E == 1:
        share = torch.ones(1, dtype=torch.float64)
    loads = _integer_loads(share / share.sum(), total=T * K, cap=T)
    blocks = torch.repeat_interleave(torch.arange(E), loads)
    gen = torch.Generator().manual_seed(spec.seed)
    perm = torch.randperm(T, generator=gen)
    return blocks.view(K, T).t()[perm].contiguous()


def _integer_loads(share: torch.Tensor, total: int, cap: int) -> torch.Tensor:
    """Integer loads close to share*total, capped at `cap`, summing to `total` (water-filling, largest remainder).

    No load ever exceeds `cap`: a load above T would give some token the same expert twice. When the uncapped
    experts' shares are all 0 (a steep skew underflows), the capped experts' overflow is spread evenly over them.
    """
    target = share * total
    capped = torch.zeros_like(share, dtype=torch.bool)
    while bool((target > cap + 1e-9).any()):
        capped |= target > cap + 1e-9
        spare = total - cap * int(capped.sum())
        free = share.masked_fill(capped, 0.0)
        if not bool(free.sum() > 0):
            free = (~capped).double()
        target = torch.where(capped, float(cap), free / free.sum() * spare)
    loads = target.floor().long().clamp_max(cap)
    by_remainder = torch.argsort(target - loads, descending=True, stable=True)
    with_room = by_remainder[loads[by_remainder] < cap]
    loads[with_room[: total - int(loads.sum())]] += 1
    return loads


class Router:
    """Turns hidden states into a RoutingRecord according to `cfg.router`; holds the seeded noise generator."""

    def __init__(self, cfg: MoEConfig) -> None:
        self.cfg = cfg
        self._generators: dict[torch.device, torch.Generator] = {}

    def _generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device).manual_seed(self.cfg.noise_seed)
        return self._generators[device]

    def __call__(self, weights: MoEWeights, x_TD: torch.Tensor, training: bool) -> RoutingRecord:
        logits_TE = F.linear(x_TD, weights.router.weight).float()
        if self.cfg.router == "expert_choice":
            return self._expert_choice(logits_TE)
        extra: dict[str, torch.Tensor | None] = {}
        if self.cfg.router == "softmax_topk":
            probs_TE = torch.softmax(logits_TE, dim=-1)
            select_TE = probs_TE
        elif self.cfg.router == "sigmoid_topk":
            probs_TE = torch.sigmoid(logits_TE)
            select_TE = probs_TE + weights.router.e_score_correction_bias
        else:  # noisy_topk, Shazeer et al. 2017 eqs. 3-5
            extra["clean_logits_TE"] = logits_TE
            if training:
                noise_std_TE = F.softplus(F.linear(x_TD, weights.router.noise_weight).float())
                noise = torch.randn(logits_TE.shape, generator=self._generator(x_TD.device), device=x_TD.device)
                logits_TE = logits_TE + noise * noise_std_TE
                extra["noise_std_TE"] = noise_std_TE
            probs_TE = torch.softmax(logits_TE, dim=-1)
            select_TE = logits_TE
        return self._token_choice(logits_TE, probs_TE, select_TE, **extra)

    def _token_choice(
        self, logits_TE: torch.Tensor, probs_TE: torch.Tensor, select_TE: torch.Tensor, **extra
    ) -> RoutingRecord:
        cfg = self.cfg
        T, E = probs_TE.shape
        K, device = cfg.top_k, probs_TE.device
        if cfg.synthetic is None and select_TE is probs_TE:  # the top-k values are the weights: no gather
            weight_TK, expert_idx_TK = torch.topk(probs_TE, K, dim=-1)
        else:
            with torch.no_grad():
                if cfg.synthetic is not None:
                    expert_idx_TK = synthetic_expert_idx(T, E, K, cfg.synthetic).to(device)
                else:
                    expert_idx_TK = torch.topk(select_TE, K, dim=-1).indices
            weight_TK = probs_TE.gather(1, expert_idx_TK)
        # Noisy top-k keeps only the top-k logits before its softmax, which is this renormalisation.
        if cfg.normalize_topk or cfg.router == "noisy_topk":
            total_T1 = weight_TK.sum(-1, keepdim=True)
            # A softmax's top-k sum is at least 1/E; only sigmoid scores can underflow to a zero sum.
            weight_TK = weight_TK / (total_T1.clamp_min(1e-20) if cfg.router == "sigmoid_topk" else total_T1)
        capacity = cfg.capacity(T)
        if capacity is None:  # every choice kept, token by token
            with torch.no_grad():
                token_idx_N = torch.arange(T * K, device=device).div_(K, rounding_mode="floor")
            expert_idx_N, weight_N = expert_idx_TK.view(-1), weight_TK.view(-1)
            num_dropped = torch.zeros((), dtype=torch.long, device=device)
        else:
            with torch.no_grad():
                keep_TK = topk_priority_keep(expert_idx_TK, E, capacity)
                token_idx_TK = torch.arange(T, device=device).unsqueeze(1).expand(T, K)
            token_idx_N, expert_idx_N, weight_N = token_idx_TK[keep_TK], expert_idx_TK[keep_TK], weight_TK[keep_TK]
            num_dropped = (~keep_TK).sum()
        return RoutingRecord(
            token_idx_N=token_idx_N,
            expert_idx_N=expert_idx_N,
            weight_N=weight_N,
            tokens_per_expert_E=count_per_expert(expert_idx_N, E),
            num_dropped=num_dropped,
            logits_TE=logits_TE,
            probs_TE=probs_TE,
            expert_idx_TK=expert_idx_TK,
            weight_TK=weight_TK,
            **extra,
        )

    def _expert_choice(self, logits_TE: torch.Tensor) -> RoutingRecord:
        """Zhou et al. 2022: each expert takes its top-C tokens by router probability."""
        T, E = logits_TE.shape
        probs_TE = torch.softmax(logits_TE, dim=-1)
        capacity = self.cfg.capacity(T)
        weight_EC, token_idx_EC = torch.topk(probs_TE.t(), capacity, dim=-1)
        expert_idx_EC = torch.arange(E, device=logits_TE.device).unsqueeze(1).expand(E, capacity)
        return RoutingRecord(
            token_idx_N=token_idx_EC.reshape(-1),
            expert_idx_N=expert_idx_EC.reshape(-1),
            weight_N=weight_EC.reshape(-1),
            tokens_per_expert_E=torch.full((E,), capacity, dtype=torch.long, device=logits_TE.device),
            num_dropped=torch.zeros((), dtype=torch.long, device=logits_TE.device),
            logits_TE=logits_TE,
            probs_TE=probs_TE,
        )
