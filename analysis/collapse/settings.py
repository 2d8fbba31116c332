"""The collapse experiment's sizes and knobs, and its arms: which router, which auxiliary loss, which bias rule.

Legend: T tokens per step, E experts, K top_k, D d_model, C clusters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields

import torch

from moe_impls import MoEConfig, RoutingRecord
from moe_impls.losses import importance_loss, load_loss, switch_loss, z_loss

IMPL = "sort_group"


@dataclass(frozen=True)
class CollapseConfig:
    """Sizes and knobs of the experiment; the defaults finish in well under a minute on 2 CPU cores."""

    steps: int = field(default=2000, metadata={"help": "optimizer steps per setting"})
    seed: int = field(default=0, metadata={"help": "one seed for weights, data and router noise in every setting"})
    tokens: int = field(default=512, metadata={"help": "tokens (inputs) per step, T"})
    num_experts: int = field(default=16, metadata={"help": "E; equal to the clusters so each expert can own one"})
    top_k: int = 2
    clusters: int = field(default=16, metadata={"help": "C sub-tasks, one linear map each"})
    d_in: int = field(default=16, metadata={"help": "input features"})
    d_model: int = field(default=32, metadata={"help": "width of the embedding the router and experts see"})
    d_ff: int = field(default=32, metadata={"help": "hidden size of one SwiGLU expert"})
    d_out: int = field(default=4, metadata={"help": "regression targets per input"})
    input_offset: float = field(
        default=16.0, metadata={"help": "norm of the offset every input shares: the collapse trigger"}
    )
    cluster_spread: float = field(default=2.0, metadata={"help": "std of the cluster centres around the offset"})
    within_cluster_std: float = field(default=0.5, metadata={"help": "std of an input around its cluster centre"})
    router_init_scale: float = field(
        default=0.1, metadata={"help": "router weight init multiplier; small = near-uniform routing at step 0"}
    )
    lr: float = field(default=3e-3, metadata={"help": "Adam learning rate, every parameter"})
    importance_weight: float = field(default=0.1, metadata={"help": "Shazeer 2017 w_importance"})
    load_weight: float = field(default=0.1, metadata={"help": "Shazeer 2017 w_load (noisy setting)"})
    switch_alpha: float = field(default=0.01, metadata={"help": "Switch Transformer alpha"})
    z_weight: float = field(default=1e-3, metadata={"help": "ST-MoE router z-loss weight"})
    gamma: float = field(default=0.001, metadata={"help": "bias update speed of aux-loss-free balancing (DeepSeek-V3)"})
    fast_gamma_factor: float = field(default=10.0, metadata={"help": "the bias-fast setting uses gamma times this"})
    eval_every: int = field(default=50, metadata={"help": "steps between held-out evaluations (and the last step)"})
    eval_tokens: int = field(default=2048, metadata={"help": "held-out inputs, routed in eval mode (no noise)"})

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and f.name != "seed" and value <= 0:
                raise ValueError(f"CollapseConfig.{f.name} must be a positive integer, got {value!r}")
            if f.type == "float" and not value >= 0:
                raise ValueError(f"CollapseConfig.{f.name} must be >= 0, got {value!r}")
        if self.top_k > self.num_experts:
            raise ValueError(f"CollapseConfig.top_k must be <= num_experts ({self.num_experts}), got {self.top_k}")

    def moe_config(self, router: str) -> MoEConfig:
        return MoEConfig(
            d_model=self.d_model,
            d_ff=self.d_ff,
            num_experts=self.num_experts,
            top_k=self.top_k,
            router=router,
            noise_seed=self.seed,
        )


AuxLoss = Callable[[RoutingRecord, CollapseConfig], torch.Tensor]
FAST = -1.0  # marker: take the factor from CollapseConfig.fast_gamma_factor


@dataclass(frozen=True)
class Setting:
    """One arm of the experiment: a router kind, the auxiliary loss added to the task loss, the bias rule."""

    name: str
    router: str
    aux: AuxLoss | None
    recipe: str
    gamma_factor: float | None = None  # bias balancing at gamma * factor (None: no bias balancing)

    def gamma(self, cfg: CollapseConfig) -> float | None:
        if self.gamma_factor is None:
            return None
        return cfg.gamma * (cfg.fast_gamma_factor if self.gamma_factor == FAST else self.gamma_factor)


SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        Setting("none", "softmax_topk", None, "softmax top-k, no balancing"),
        Setting(
            "importance",
            "softmax_topk",
            lambda r, c: importance_loss(r, c.importance_weight),
            "softmax top-k + importance CV^2 loss (Shazeer 2017 eq. 6-7)",
        ),
        Setting(
            "switch",
            "softmax_topk",
            lambda r, c: switch_loss(r, c.switch_alpha),
            "softmax top-k + Switch load-balancing loss alpha*E*sum f_i P_i",
        ),
        Setting(
            "switch+z",
            "softmax_topk",
            lambda r, c: switch_loss(r, c.switch_alpha) + z_loss(r, c.z_weight),
            "softmax top-k + Switch loss + ST-MoE router z-loss",
        ),
        Setting(
            "noisy",
            "noisy_topk",
            lambda r, c: importance_loss(r, c.importance_weight) + load_loss(r, c.top_k, c.load_weight),
            "noisy top-k gating (noise in training only) + importance loss + smooth load loss, both w = 0.1: "
            "the recipe of Shazeer 2017 (Appendix A), whose load loss needs the noise to be differentiable",
        ),
        Setting(
            "bias",
            "sigmoid_topk",
            None,
            "sigmoid top-k with the selection-only e_score_correction_bias, after each step "
            "bias_i += gamma * sign(mean_load - load_i) (DeepSeek-V3, auxiliary-loss-free)",
            gamma_factor=1.0,
        ),
        Setting(
            "bias-fast",
            "sigmoid_topk",
            None,
            "as bias, with gamma * fast_gamma_factor: how the update speed trades recovery time for stability",
            gamma_factor=FAST,
        ),
    )
}


def select_settings(names: list[str] | None) -> list[str]:
    """The named settings in the given order (all of them for None); ValueError naming any unknown one."""
    chosen = list(SETTINGS) if names is None else names
    unknown = [n for n in chosen if n not in SETTINGS]
    if unknown:
        raise ValueError(f"unknown collapse settings {unknown}; known: {', '.join(SETTINGS)}")
    return chosen
