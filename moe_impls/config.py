"""Configuration of one MoE layer, validated when it is built so that a bad shape fails before any work."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

ACTIVATIONS = ("swiglu", "gelu")
ROUTERS = ("softmax_topk", "noisy_topk", "sigmoid_topk", "expert_choice")
SKEWS = ("uniform", "zipf", "hot", "collapse")
# At s = 10 the first expert already outweighs the second 1024:1, so the caps decide the loads and a steeper
# skew routes the same; past s ~ 1075 the shares underflow float64. Bounded so that a typo cannot ask for it.
ZIPF_MAX_S = 10.0


def _positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class SyntheticRouting:
    """Overrides which experts are chosen so that the load per expert is set directly.

    The learned router still runs (its cost stays in the timing, as MegaBlocks' forced routing does) and
    still supplies the routing weights; only the choice of experts is replaced. Deterministic from `seed`.
    """

    kind: str = "uniform"
    zipf_s: float = field(default=1.2, metadata={"help": "Zipf exponent in [0, 10]: load of the r-th expert ~ r^-s"})
    hot_fraction: float = field(default=0.5, metadata={"help": "share in (0, 1] of all assignments to the hot expert"})
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in SKEWS:
            raise ValueError(f"SyntheticRouting.kind must be one of {SKEWS}, got {self.kind!r}")
        if not 0.0 <= self.zipf_s <= ZIPF_MAX_S:  # false for nan too
            raise ValueError(f"SyntheticRouting.zipf_s must be in [0, {ZIPF_MAX_S:g}], got {self.zipf_s}")
        if not 0.0 < self.hot_fraction <= 1.0:
            raise ValueError(f"SyntheticRouting.hot_fraction must be in (0, 1], got {self.hot_fraction}")

    @property
    def label(self) -> str:
        """Short name used in result rows: `uniform`, `zipf1.2`, `hot0.5`, `collapse`."""
        if self.kind == "zipf":
            return f"zipf{self.zipf_s:g}"
        if self.kind == "hot":
            return f"hot{self.hot_fraction:g}"
        return self.kind


@dataclass(frozen=True)
class MoEConfig:
    """One MoE layer: E experts of SwiGLU/GELU FFNs with hidden size d_ff each, top-k routed."""

    d_model: int
    d_ff: int = field(metadata={"help": "hidden size of one expert"})
    num_experts: int
    top_k: int = 2
    activation: str = "swiglu"
    router: str = "softmax_topk"
    capacity_factor: float | None = field(
        default=None,
        metadata={"help": "None = dropless; else each expert keeps ceil(cf * T * k / E) assignments"},
    )
    # Mixtral renormalises the top-k weights to sum to 1; Qwen-MoE/OLMoE keep the raw softmax values.
    normalize_topk: bool = True
    noise_seed: int = 0
    synthetic: SyntheticRouting | None = None

    def __post_init__(self) -> None:
        for name in ("d_model", "d_ff", "num_experts", "top_k"):
            _positive(name, getattr(self, name))
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k must be <= num_experts ({self.num_experts}), got {self.top_k}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.router not in ROUTERS:
            raise ValueError(f"router must be one of {ROUTERS}, got {self.router!r}")
        if self.capacity_factor is not None and not 0 < self.capacity_factor < math.inf:  # nan fails both
            raise ValueError(f"capacity_factor must be a finite number > 0 or None, got {self.capacity_factor}")
        if self.synthetic is not None:
            if self.router == "expert_choice":
                raise ValueError("synthetic routing overrides token choice; router 'expert_choice' cannot take it")
            s = self.synthetic
            if s.kind == "hot" and s.hot_fraction * self.top_k > 1.0 + 1e-9:
                raise ValueError(
                    f"SyntheticRouting.hot_fraction must be <= 1/top_k = {1 / self.top_k:g} "
                    f"(an expert takes each token once), got {s.hot_fraction}"
                )

    def capacity(self, num_tokens: int) -> int | None:
        """Slots per expert; None when dropless. Expert choice: C = ceil(T * cf / E), cf defaulting to top_k."""
        if self.router == "expert_choice":
            cf = self.capacity_factor if self.capacity_factor is not None else self.top_k
            return min(num_tokens, math.ceil(num_tokens * cf / self.num_experts))
        if self.capacity_factor is None:
            return None
        return math.ceil(self.capacity_factor * num_tokens * self.top_k / self.num_experts)

    @property
    def expert_in_features(self) -> int:
        """Rows of one expert's first projection: gate and up stacked for SwiGLU, up alone for GELU."""
        return 2 * self.d_ff if self.activation == "swiglu" else self.d_ff
