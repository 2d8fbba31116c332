"""Expert FFN math shared by every implementation and the dense baselines: the activation and one FFN.

Legend: D d_model, H first-projection width (2F SwiGLU, F GELU), F d_ff, N rows.
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


def add_bias(y_EXO: torch.Tensor, bias_EO: torch.Tensor | None) -> torch.Tensor:
    """Each expert's bias on every row of its block of a stacked [E, rows, O] output (none: unchanged)."""
    return y_EXO if bias_EO is None else y_EXO + bias_EO.unsqueeze(1)


def per_expert(t_E: torch.Tensor | None, num_experts: int) -> list[torch.Tensor | None]:
    """Expert e's slice of a stacked tensor, taken once (unbind: one backward for all E), or E Nones."""
    return list(t_E.unbind(0)) if t_E is not None else [None] * num_experts
