"""Expert FFN math shared by every implementation: activation, one expert's FFN, and the weighted combine.

Legend: T tokens, D d_model, H first-projection width (2F SwiGLU, F GELU), F d_ff, N assignments.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def activate(h_NH: torch.Tensor, activation: str) -> torch.Tensor:
    """SwiGLU splits H into gate and up halves (transformers' `gate_up_proj` order); GELU is elementwise."""
    if activation == "swiglu":
        gate, up = h_NH.chunk(2, dim=-1)
        return F.silu(gate) * up
    return F.gelu(h_NH)


def expert_ffn(x_ND: torch.Tensor, w_in_HD: torch.Tensor, w_out_DF: torch.Tensor, activation: str) -> torch.Tensor:
    return F.linear(activate(F.linear(x_ND, w_in_HD), activation), w_out_DF)


def combine(num_tokens: int, token_idx_N: torch.Tensor, out_ND: torch.Tensor, weight_N: torch.Tensor) -> torch.Tensor:
    """fp32 [T, D]: each assignment's output times its routing weight, summed per token.

    The weights are applied in fp32 and summed in fp32, so low-precision runs lose no accuracy here.
    """
    y_TD = out_ND.new_zeros(num_tokens, out_ND.shape[-1], dtype=torch.float32)
    return y_TD.index_add_(0, token_idx_N, out_ND.float() * weight_N.unsqueeze(-1))
