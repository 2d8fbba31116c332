"""Dense FFN baselines that an MoE layer must be judged against.

`param_matched(cfg)`: d_ff = E * d_ff, the same expert parameters as the MoE layer, all of them run per token.
`flop_matched(cfg)`: d_ff = top_k * d_ff, the same expert FLOPs per token as the MoE layer.
Neither has a router: the MoE layer's router (E * D parameters, 2 * T * D * E FLOPs) is counted on the MoE
side only, so the comparison charges sparsity for its routing.
"""

from __future__ import annotations

import torch
from torch import nn

from moe_impls.config import MoEConfig
from moe_impls.experts import expert_ffn


class DenseFFN(nn.Module):
    """One FFN with the experts' activation and layout: `gate_up_proj` [2F, D] or `up_proj` [F, D]; `down_proj` [D, F]."""

    capturable = True  # plain matmuls: a CUDA graph can replay it

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        activation: str = "swiglu",
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.d_model, self.d_ff, self.activation = d_model, d_ff, activation
        width = 2 * d_ff if activation == "swiglu" else d_ff
        w_in = nn.Parameter(torch.empty(width, d_model, device=device, dtype=dtype))
        setattr(self, "gate_up_proj" if activation == "swiglu" else "up_proj", w_in)
        self.down_proj = nn.Parameter(torch.empty(d_model, d_ff, device=device, dtype=dtype))
        self.reset_parameters(seed)

    @torch.no_grad()
    def reset_parameters(self, seed: int) -> None:
        """Seeded normal init, std 1/sqrt(fan_in), drawn in place on the device (as MoEWeights draws)."""
        gen = torch.Generator(device=self.down_proj.device).manual_seed(seed)
        for p in (self.w_in_HD, self.down_proj):
            p.normal_(0.0, p.shape[-1] ** -0.5, generator=gen)

    @property
    def w_in_HD(self) -> torch.Tensor:
        return self.gate_up_proj if self.activation == "swiglu" else self.up_proj

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if hidden.shape[-1] != self.d_model:
            raise ValueError(f"DenseFFN: expected hidden states [..., {self.d_model}], got {tuple(hidden.shape)}")
        return expert_ffn(hidden, self.w_in_HD, self.down_proj, self.activation)


def param_matched(cfg: MoEConfig, **kwargs) -> DenseFFN:
    return DenseFFN(cfg.d_model, cfg.num_experts * cfg.d_ff, cfg.activation, **kwargs)


def flop_matched(cfg: MoEConfig, **kwargs) -> DenseFFN:
    return DenseFFN(cfg.d_model, cfg.top_k * cfg.d_ff, cfg.activation, **kwargs)


DENSE_BASELINES = ("param_matched", "flop_matched")  # the one place the names are written
BASELINES = dict(zip(DENSE_BASELINES, (param_matched, flop_matched)))
