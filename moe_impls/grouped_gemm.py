"""torch's grouped GEMM, callable the same way in eager code and under torch.compile at every dtype it takes.

torch.compile checks `aten._grouped_mm` against the CUDA kernel's rule, bf16 only (torch 2.13), although the
CPU kernel takes any float. Compiled float32 sort_group on CPU therefore lost the one kernel call: it took the
per-segment loop, a host sync, and a graph unrolled over every expert (128 experts: 25 s to compile the
first token count, 185 s the second). Under compile on CPU the kernel is called through a custom op instead,
whose fake states the output's shape and whose backward is the kernel's own two grouped GEMMs; eager code,
and CUDA, call the aten op directly.
Legend: N rows, E groups (experts), I/O a matmul's input/output width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# torch.nn.functional.grouped_mm is the public name of torch._grouped_mm (torch 2.8+), which older builds offer alone.
aten_grouped_mm = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


def grouped_mm(x_NI: torch.Tensor, w_EIO: torch.Tensor, offsets_E: torch.Tensor) -> torch.Tensor:
    """Rows of segment e (ending at offsets_E[e]) times w_EIO[e] -> [N, O]."""
    if torch.compiler.is_compiling() and x_NI.device.type == "cpu":
        return traced_grouped_mm(x_NI, w_EIO, offsets_E)
    return aten_grouped_mm(x_NI, w_EIO, offs=offsets_E)


@torch.library.custom_op("moe_bench::grouped_mm", mutates_args=())
def traced_grouped_mm(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """aten._grouped_mm(a, b, offs): [N, I] x [E, I, O] -> [N, O], or [I, N] x [N, O] -> [E, I, O]."""
    return aten_grouped_mm(a, b, offs=offs)


@traced_grouped_mm.register_fake
def _(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    if b.dim() == 3:
        return a.new_empty(a.shape[0], b.shape[-1])
    return a.new_empty(offs.shape[0], a.shape[0], b.shape[-1])


def _save(ctx, inputs: tuple, output: torch.Tensor) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad_NO: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
    """The forward's [N, I] x [E, I, O] only. w_EIO is usually a parameter [E, O, I] seen transposed, so its
    gradient is made in the parameter's layout ([O, N] x [N, I] per group) and handed back transposed: no copy.
    The kernel rejects stride-0 rows, which a sum's gradient arrives as."""
    x_NI, w_EIO, offsets_E = ctx.saved_tensors
    grad_NO = grad_NO.contiguous()
    grad_x = traced_grouped_mm(grad_NO, w_EIO.mT, offsets_E) if ctx.needs_input_grad[0] else None
    grad_w = traced_grouped_mm(grad_NO.t(), x_NI, offsets_E).mT if ctx.needs_input_grad[1] else None
    return grad_x, grad_w, None


traced_grouped_mm.register_autograd(_backward, setup_context=_save)
