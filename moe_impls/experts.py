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


class _BatchedLinear(torch.autograd.Function):
    """x @ w^T per expert, with a backward that writes each grad in its own tensor's layout, as F.linear's does.

    bmm's own backward gives w's grad as (x^T @ g)^T, which AccumulateGrad copies into w's layout: at 16
    tokens on CPU that copy was half of a training step. Here x's grad is g @ w and w's is g^T @ x.
    """

    @staticmethod
    def forward(x_EXI: torch.Tensor, w_EOI: torch.Tensor) -> torch.Tensor:
        return torch.bmm(x_EXI, w_EOI.mT)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, g_EXO: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        x_EXI, w_EOI = ctx.saved_tensors
        g_x = torch.bmm(g_EXO, w_EOI) if ctx.needs_input_grad[0] else None
        g_w = torch.bmm(g_EXO.mT, x_EXI) if ctx.needs_input_grad[1] else None
        return g_x, g_w


def batched_linear(x_EXI: torch.Tensor, w_EOI: torch.Tensor) -> torch.Tensor:
    """Each expert's rows through its own weight: [E, X, I] @ [E, O, I]^T -> [E, X, O] (F.linear, batched)."""
    return _BatchedLinear.apply(x_EXI, w_EOI)
