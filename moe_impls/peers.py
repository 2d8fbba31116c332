"""The implementations a user would otherwise reach for: transformers v5's experts, on our weights and routing.

transformers (optional extra `peers`) runs a model's experts through one of its `experts_implementation`s:
    hf_eager        a loop over the experts hit (MixtralExperts.forward)
    hf_batched_mm   gathers one copy of the expert weights per assignment, then two bmm: memory grows as
                    T * K * (3 F D) elements, so it has a predicted footprint and the runner skips what cannot fit
    hf_grouped_mm   sort by expert, torch's grouped_mm (or transformers' per-expert fallback)
Each row builds a `MixtralExperts` on the meta device, swaps in the shared `gate_up_proj` [E, 2F, D] and
`down_proj` [E, D, F] (our container already uses its layout), and hands it our router's top-k choice, so
only the dispatch-and-compute stage differs from our rows. transformers' experts interface takes
(top_k_index [T, K], top_k_weights [T, K]) and runs SwiGLU experts, so capacity drops, expert choice and
GELU experts are not representable: those points are skipped with the reason.
transformers is imported on first build, not here: `import moe_impls` stays fast.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from typing import ClassVar

import torch
from torch import nn

from moe_impls.config import MoEConfig
from moe_impls.layer import MoELayer
from moe_impls.registry import register, register_unavailable
from moe_impls.routing import RoutingRecord
from moe_impls.weights import MoEWeights

MIN_TRANSFORMERS = 5


def unavailable_reason() -> str | None:
    """Why the peers cannot run here (transformers missing or older than v5), or None."""
    if importlib.util.find_spec("transformers") is None:
        return "transformers is not installed (pip install 'moe-bench[peers]')"
    version = importlib.metadata.version("transformers")
    major = version.split(".")[0]
    if not major.isdigit() or int(major) < MIN_TRANSFORMERS:
        return f"transformers {version} has no experts_implementation; need >= {MIN_TRANSFORMERS}"
    return None


def absent() -> dict[str, str]:
    """Peer names that are not registered here, each with the reason."""
    why = _UNAVAILABLE
    return dict.fromkeys(PEERS, why) if why else {}


def hf_experts(cfg: MoEConfig, weights: MoEWeights, experts_implementation: str) -> nn.Module:
    """A transformers `MixtralExperts` whose parameters are `weights`' own (shared, not copied)."""
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralExperts

    hf_cfg = MixtralConfig(
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_ff,
        num_local_experts=cfg.num_experts,
        num_experts_per_tok=cfg.top_k,
        hidden_act="silu",
        experts_implementation=experts_implementation,
    )
    with torch.device("meta"):
        experts = MixtralExperts(hf_cfg)
    experts.gate_up_proj = weights.experts.gate_up_proj
    experts.down_proj = weights.experts.down_proj
    return experts


class TransformersExpertsMoE(MoELayer):
    """Our router around one transformers experts implementation, which dispatches and combines for itself."""

    experts_implementation: ClassVar[str]

    def __init__(self, weights: MoEWeights) -> None:
        why = self.unsupported(weights.cfg)
        if why:
            raise ValueError(f"{self.name}: {why}")
        super().__init__(weights)
        self.hf = hf_experts(weights.cfg, weights, self.experts_implementation)

    @classmethod
    def unsupported(cls, cfg: MoEConfig) -> str | None:
        if cfg.activation != "swiglu":
            return f"transformers' experts run SwiGLU only, got activation {cfg.activation!r}"
        if cfg.router == "expert_choice":
            return "transformers' experts take a top-k choice per token; expert-choice routing is not representable"
        if cfg.capacity_factor is not None:
            return "transformers' experts are dropless; capacity_factor drops are not representable"
        return None

    def compute_experts(self, x_TD: torch.Tensor, routing: RoutingRecord) -> tuple[torch.Tensor, int]:
        y_TD = self.hf(x_TD, routing.expert_idx_TK, routing.weight_TK)
        return y_TD, routing.expert_idx_TK.numel()


class BatchedMMExpertsMoE(TransformersExpertsMoE):
    """batched_mm, whose footprint is known in advance."""

    @classmethod
    def predicted_bytes(cls, cfg: MoEConfig, tokens: int, dtype: torch.dtype, mode: str) -> int | None:
        """The gathered weight copies dominate: N = T*K copies of gate_up [2F, D] and of down [D, F].

        Forward: both gathers are live at once, 3 N F D elements. Train: autograd keeps them for backward;
        the backward frees the down copies before it builds the gate_up copies' gradient, so the peak is
        gate_up's copies plus their gradient, 4 N F D. Within 2% of the CPU profiler's figure (tested).
        """
        H, D = cfg.expert_in_features, cfg.d_model
        forward = H * D + D * cfg.d_ff + H + 2 * D
        per_assignment = 2 * H * D + 4 * H if mode == "train" else forward
        return tokens * cfg.top_k * per_assignment * dtype.itemsize


class HFEagerMoE(TransformersExpertsMoE):
    experts_implementation = "eager"


class HFBatchedMMMoE(BatchedMMExpertsMoE):
    experts_implementation = "batched_mm"


class HFGroupedMMMoE(TransformersExpertsMoE):
    experts_implementation = "grouped_mm"

    @classmethod
    def unsupported(cls, cfg: MoEConfig) -> str | None:
        if cfg.d_model % 8 or cfg.d_ff % 8:  # torch's kernel raises "strides should be multiple of 16 bytes"
            return f"transformers' grouped_mm needs d_model and d_ff in multiples of 8, got {cfg.d_model}, {cfg.d_ff}"
        return super().unsupported(cfg)


PEERS: dict[str, type[TransformersExpertsMoE]] = {
    "hf_eager": HFEagerMoE,
    "hf_batched_mm": HFBatchedMMMoE,
    "hf_grouped_mm": HFGroupedMMMoE,
}


def register_peers(why: str | None) -> None:
    """Registered only where they can run; elsewhere each name resolves to `why` rather than 'unknown'."""
    for name, cls in PEERS.items():
        if why is None:
            register(name)(cls)
        else:
            register_unavailable(name, why)


_UNAVAILABLE = unavailable_reason()
register_peers(_UNAVAILABLE)
