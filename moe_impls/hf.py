"""Build our layer over the weights of a transformers (v5) sparse MoE block, so a user's own model block
can be benchmarked under every implementation. transformers itself is never imported here.

Supported: Mixtral, Qwen2-MoE, Qwen3-MoE and OLMoE blocks (a `gate` top-k router with `weight` [E, D],
`experts` with `gate_up_proj` [E, 2F, D] and `down_proj` [E, D, F]). The parameters are shared, not copied.
"""

from __future__ import annotations

import torch
from torch import nn

from moe_impls.config import MoEConfig
from moe_impls.layer import LayerRecord, MoELayer
from moe_impls.registry import get
from moe_impls.weights import MoEWeights


class SharedExpertMoE(nn.Module):
    """Routed experts plus Qwen2-MoE's always-on shared expert, scaled by its own sigmoid gate."""

    def __init__(self, routed: MoELayer, shared_expert: nn.Module, shared_expert_gate: nn.Module) -> None:
        super().__init__()
        self.routed, self.shared_expert, self.shared_expert_gate = routed, shared_expert, shared_expert_gate

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, LayerRecord]:
        y, routing = self.routed(hidden)
        return y + torch.sigmoid(self.shared_expert_gate(hidden)) * self.shared_expert(hidden), routing


def from_transformers(block: nn.Module, impl: str = "sort_group") -> MoELayer | SharedExpertMoE:
    """Our `impl` layer sharing `block`'s router and expert parameters and its routing semantics."""
    gate, experts = getattr(block, "gate", None), getattr(block, "experts", None)
    name = type(block).__name__
    if gate is None or experts is None or not hasattr(experts, "gate_up_proj"):
        raise ValueError(
            f"from_transformers: expected a v5 sparse MoE block with gate and experts.gate_up_proj, got {name}"
        )
    act = getattr(experts, "act_fn", None)
    probe = torch.linspace(-4, 4, 9)
    if act is not None and not torch.allclose(act(probe), torch.nn.functional.silu(probe)):
        raise ValueError(f"from_transformers: expected SiLU experts (SwiGLU), got {type(act).__name__} in {name}")
    num_experts, d_model = gate.weight.shape
    cfg = MoEConfig(
        d_model=d_model,
        d_ff=experts.down_proj.shape[-1],
        num_experts=num_experts,
        top_k=gate.top_k,
        normalize_topk=getattr(gate, "norm_topk_prob", True),  # Mixtral's router always renormalises
    )
    weights = MoEWeights(cfg, device="meta", dtype=gate.weight.dtype, seed=None)
    weights.router.weight = gate.weight
    weights.experts.gate_up_proj = experts.gate_up_proj
    weights.experts.down_proj = experts.down_proj
    layer = get(impl)(weights)
    if hasattr(block, "shared_expert"):
        return SharedExpertMoE(layer, block.shared_expert, block.shared_expert_gate)
    return layer
