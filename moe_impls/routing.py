"""Routers shared by every implementation, and the routing record they hand to dispatch.

Legend: T tokens, D d_model, E experts, K top_k, N assignments that experts compute (after capacity drops).
Every router ends in the same flat form, (token_idx_N, expert_idx_N, weight_N), which is all that
dispatch needs; token choice also keeps its per-token view (expert_idx_TK, weight_TK).
Index bookkeeping is integer tensors, which autograd never records; the weights keep their graph to the router.
Nothing is cached: a derived tensor follows the grad mode of whoever reads it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from moe_impls.config import MoEConfig, SyntheticRouting
from moe_impls.views import KeptViews
from moe_impls.weights import MoEWeights


@dataclass(frozen=True, kw_only=True)
class Assignments:
    """Which expert computes each assignment and its weight: all that dispatch and combine read, whether our
    router decided it or a transformers model's own (`from_top_k`).

    Token choice keeps every token's K choices as [T, K]; where every choice is an assignment (no capacity),
    the flat N = T*K form is their view, token by token, and a token's id is implied by its position. `kept`
    holds the flat form where it is not (capacity drops, expert choice). Whatever dispatch does not read is
    derived on first use, never in the forward: each derived tensor would be a kernel launch per call.
    """

    num_experts: int
    expert_idx_TK: torch.Tensor | None = None  # token choice: each token's K chosen experts (before any drop)
    weight_TK: torch.Tensor | None = None  # fp32, multiplies expert output in combine
    kept: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # (token_idx_N, expert_idx_N, weight_N)

    @classmethod
    def from_top_k(cls, expert_idx_TK: torch.Tensor, weight_TK: torch.Tensor, num_experts: int) -> Assignments:
        """Every token's K choices, token by token (as our token-choice router orders them); no host sync."""
        return cls(num_experts=num_experts, expert_idx_TK=expert_idx_TK.long(), weight_TK=weight_TK.float())

    @property
    def token_idx_N(self) -> torch.Tensor:
        """int64 [N]: the token of each assignment."""
        if self.kept is not None:
            return self.kept[0]
        T, K = self.expert_idx_TK.shape
        return torch.arange(T * K, device=self.expert_idx_TK.device).div_(K, rounding_mode="floor")

    @property
    def expert_idx_N(self) -> torch.Tensor:
        """int64 [N]: the expert that computes each assignment."""
        return self.kept[1] if self.kept is not None else self.expert_idx_TK.view(-1)

    @property
    def weight_N(self) -> torch.Tensor:
        """fp32 [N], with its graph to the router."""
        return self.kept[2] if self.kept is not None else self.weight_TK.view(-1)

    @property
    def kept_top_k(self) -> int | None:
        """K where every token kept its K choices, so token t's assignments are N[t*K:(t+1)*K]; else None."""
        return self.expert_idx_TK.shape[1] if self.kept is None else None

    @property
    def tokens_per_expert_E(self) -> torch.Tensor:
        """int64 [E]: assignments each expert computes."""
        return count_per_expert(self.expert_idx_N, self.num_experts)

    def in_order(self, order_N: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(token_idx, weight as [M, 1]) of the assignments `order_N` picks, in its order: where token ids are
        implied, one division rather than materialising them and gathering."""
        if self.kept is not None:
            return self.kept[0][order_N], self.kept[2][order_N].unsqueeze(-1)
        K = self.expert_idx_TK.shape[1]
        return order_N.div(K, rounding_mode="floor"), self.weight_TK.view(-1, 1).index_select(0, order_N)


@dataclass(frozen=True, kw_only=True)
class RoutingRecord(Assignments):
    """What the router decided for one forward, plus what the balance statistics and losses need."""

    logits_TE: torch.Tensor  # fp32 router logits (noisy top-k: the noisy logits H)
    computed_probs_TE: torch.Tensor | None = None  # where the router needed them; else probs_TE derives them
    dropped: torch.Tensor | None = None  # int64 scalar, assignments dropped by capacity; None: none dropped
    clean_logits_TE: torch.Tensor | None = None  # noisy top-k only: x W_g
    noise_std_TE: torch.Tensor | None = None  # noisy top-k only: softplus(x W_noise); None in eval

    @property
    def num_tokens(self) -> int:
        return self.logits_TE.shape[0]

    @property
    def probs_TE(self) -> torch.Tensor:
        """fp32 router probabilities (sigmoid top-k: the sigmoid scores), with their graph to the router."""
        if self.computed_probs_TE is not None:
            return self.computed_probs_TE
        return torch.softmax(self.logits_TE, dim=-1)

    @property
    def num_dropped(self) -> torch.Tensor:
        """int64 scalar: assignments dropped by capacity."""
        if self.dropped is not None:
            return self.dropped
        return torch.zeros((), dtype=torch.long, device=self.logits_TE.device)

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
        self._views = KeptViews()

    def _generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device).manual_seed(self.cfg.noise_seed)
        return self._generators[device]

    def __call__(self, weights: MoEWeights, x_TD: torch.Tensor, training: bool) -> RoutingRecord:
        w_ED = weights.router._parameters["weight"]  # see weights.plain_children
        logits_TE = torch.mm(x_TD, self._views.transposed("weight", w_ED)).float()
        if self.cfg.router == "expert_choice":
            return self._expert_choice(logits_TE)
        if self.cfg.router == "sigmoid_topk":
            probs_TE = torch.sigmoid(logits_TE)
            return self._sigmoid_choice(logits_TE, probs_TE, probs_TE + weights.router.e_score_correction_bias)
        extra: dict[str, torch.Tensor] = {}
        if self.cfg.router == "noisy_topk":  # Shazeer et al. 2017 eqs. 3-5
            extra["clean_logits_TE"] = logits_TE
            if training:
                noise_std_TE = F.softplus(F.linear(x_TD, weights.router.noise_weight).float())
                noise = torch.randn(logits_TE.shape, generator=self._generator(x_TD.device), device=x_TD.device)
                logits_TE = logits_TE + noise * noise_std_TE
                extra["noise_std_TE"] = noise_std_TE
        return self._softmax_choice(logits_TE, **extra)

    def _softmax_choice(self, logits_TE: torch.Tensor, **extra) -> RoutingRecord:
        """Top-k of the softmax. Renormalised over the k (noisy top-k always: it keeps only the top-k logits before
        its softmax), the weights are the softmax of the k chosen logits, the same function with two ops rather
        than four, and the full softmax is derived only if a loss or a statistic asks for it."""
        cfg = self.cfg
        K = cfg.top_k
        if not (cfg.normalize_topk or cfg.router == "noisy_topk"):
            probs_TE = torch.softmax(logits_TE, dim=-1)
            if cfg.synthetic is None:
                weight_TK, expert_idx_TK = torch.topk(probs_TE, K, dim=-1)
            else:
                expert_idx_TK = self._synthetic(probs_TE)
                weight_TK = probs_TE.gather(1, expert_idx_TK)
            return self._record(logits_TE, expert_idx_TK, weight_TK, computed_probs_TE=probs_TE, **extra)
        if cfg.synthetic is None:
            top_logits_TK, expert_idx_TK = torch.topk(logits_TE, K, dim=-1)
        else:
            expert_idx_TK = self._synthetic(logits_TE)
            top_logits_TK = logits_TE.gather(1, expert_idx_TK)
        return self._record(logits_TE, expert_idx_TK, torch.softmax(top_logits_TK, dim=-1), **extra)

    def _sigmoid_choice(
        self, logits_TE: torch.Tensor, probs_TE: torch.Tensor, select_TE: torch.Tensor
    ) -> RoutingRecord:
        """DeepSeek-V3: experts chosen on the biased scores, weighted by the unbiased ones."""
        with torch.no_grad():
            if self.cfg.synthetic is None:
                expert_idx_TK = torch.topk(select_TE, self.cfg.top_k, dim=-1).indices
            else:
                expert_idx_TK = self._synthetic(select_TE)
        weight_TK = probs_TE.gather(1, expert_idx_TK)
        if self.cfg.normalize_topk:  # sigmoid scores, unlike a softmax's top-k, can underflow to a zero sum
            weight_TK = weight_TK / weight_TK.sum(-1, keepdim=True).clamp_min(1e-20)
        return self._record(logits_TE, expert_idx_TK, weight_TK, computed_probs_TE=probs_TE)

    def _synthetic(self, scores_TE: torch.Tensor) -> torch.Tensor:
        """The configured synthetic choice of experts, on the scores' device (a host-side table copied in)."""
        T, E = scores_TE.shape
        return synthetic_expert_idx(T, E, self.cfg.top_k, self.cfg.synthetic).to(scores_TE.device)

    def _record(
        self, logits_TE: torch.Tensor, expert_idx_TK: torch.Tensor, weight_TK: torch.Tensor, **extra
    ) -> RoutingRecord:
        """Token choice's record; with a capacity, the assignments that fit (GShard priority) are `kept`."""
        T, E = logits_TE.shape
        capacity = self.cfg.capacity(T)
        if capacity is not None:
            with torch.no_grad():
                keep_TK = topk_priority_keep(expert_idx_TK, E, capacity)
                token_idx_TK = torch.arange(T, device=logits_TE.device).unsqueeze(1).expand_as(expert_idx_TK)
            extra["kept"] = (token_idx_TK[keep_TK], expert_idx_TK[keep_TK], weight_TK[keep_TK])
            extra["dropped"] = (~keep_TK).sum()
        return RoutingRecord(
            num_experts=E, expert_idx_TK=expert_idx_TK, weight_TK=weight_TK, logits_TE=logits_TE, **extra
        )

    def _expert_choice(self, logits_TE: torch.Tensor) -> RoutingRecord:
        """Zhou et al. 2022: each expert takes its top-C tokens by router probability."""
        T, E = logits_TE.shape
        probs_TE = torch.softmax(logits_TE, dim=-1)
        capacity = self.cfg.capacity(T)
        weight_EC, token_idx_EC = torch.topk(probs_TE.t(), capacity, dim=-1)
        expert_idx_EC = torch.arange(E, device=logits_TE.device).unsqueeze(1).expand(E, capacity)
        return RoutingRecord(
            num_experts=E,
            kept=(token_idx_EC.reshape(-1), expert_idx_EC.reshape(-1), weight_EC.reshape(-1)),
            logits_TE=logits_TE,
            computed_probs_TE=probs_TE,
        )
