"""Sort-and-group: order the assignments by expert, run grouped GEMMs over the contiguous segments.

`grouped_mm` is the seam: torch's grouped GEMM (moe_impls/grouped_gemm.py) where the device and dtype allow it
(CUDA: bf16; CPU: any float, compiled too; rows aligned to 16 bytes), else a per-segment loop that computes the same.
Legend: N assignments, D d_model, H first-projection width, E experts, I/O a matmul's input/output width.
"""

from __future__ import annotations

import functools

import torch

from moe_impls import grouped_gemm
from moe_impls.dispatch import SortedDispatch, sort_by_expert
from moe_impls.layer import MoELayer
from moe_impls.registry import register
from moe_impls.routing import Assignments
from moe_impls.views import KeptViews
from moe_impls.weights import MoEWeights


def grouped_mm_supported(x_NI: torch.Tensor, w_EOI: torch.Tensor) -> bool:
    """What the torch kernel requires: same dtype, bf16 on CUDA, and rows of I and of O aligned to 16 bytes.

    The forward contracts over I; the backward's grouped_mm contracts the output gradient [N, O] over O, so
    an aligned I alone passes the forward and fails the train step ("strides should be multiple of 16 bytes").
    Asked twice per forward: the answer is kept per dtype, device type and widths (a few µs each otherwise).
    """
    if x_NI.dtype != w_EOI.dtype:
        return False
    takes = _kernel_takes.__wrapped__ if torch.compiler.is_compiling() else _kernel_takes  # Dynamo traces the body
    return takes(x_NI.dtype, x_NI.device.type, w_EOI.shape[-2], w_EOI.shape[-1])


@functools.cache
def _kernel_takes(dtype: torch.dtype, device_type: str, out_width: int, in_width: int) -> bool:
    if grouped_gemm.aten_grouped_mm is None or not dtype.is_floating_point or device_type not in ("cuda", "cpu"):
        return False
    if device_type == "cuda" and dtype != torch.bfloat16:  # CUDA's kernel takes bf16 only; the CPU kernel any float
        return False
    return all(width * dtype.itemsize % 16 == 0 for width in (out_width, in_width))


def grouped_mm_reads_offsets(device: torch.device) -> bool:
    """Whether torch's grouped_mm on `device` copies `offs` to the host: on CUDA its fused kernel serves compute
    capability 9.x and 10.x only (torch 2.13); elsewhere it loops over the groups with offs read back, a host
    sync per call and no CUDA graph (pytorch/pytorch#186620, "no plan to add a non-sync variant on Ampere")."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] not in (9, 10)


@register("sort_group")
class SortGroupMoE(MoELayer):
    def __init__(self, weights: MoEWeights) -> None:
        super().__init__(weights)
        self._views = KeptViews()  # the grouped GEMMs' transposed weights, kept while autograd is off

    @property
    def capturable(self) -> bool:
        """Both grouped GEMMs run in torch's fused kernel (its fallback and ours split on host-side counts) and
        routing is sync-free."""
        w = self.experts
        kernel = grouped_mm_supported(w.w_in_EHD[0], w.w_in_EHD) and grouped_mm_supported(w.w_out_EDF[0], w.w_out_EDF)
        return self.routing_capturable and kernel and not grouped_mm_reads_offsets(w.w_in_EHD.device)

    def dispatch(self, x_TD: torch.Tensor, routing: Assignments) -> tuple[torch.Tensor, SortedDispatch]:
        """x_ND, the assignments' rows gathered into contiguous per-expert segments."""
        dispatch = sort_by_expert(x_TD, routing)
        return x_TD.index_select(0, dispatch.token_idx_N), dispatch

    def expert_outputs(self, x_ND: torch.Tensor, dispatch: SortedDispatch) -> torch.Tensor:
        experts, offsets_E = self.experts, dispatch.offsets_E
        h_NH = _plus(self.grouped_mm(x_ND, experts.w_in_EHD, offsets_E, "w_in"), experts.bias_in_EH, dispatch)
        out_ND = self.grouped_mm(experts.activate(h_NH), experts.w_out_EDF, offsets_E, "w_out")
        return _plus(out_ND, experts.bias_out_ED, dispatch)

    def grouped_mm(self, x_NI: torch.Tensor, w_EOI: torch.Tensor, offsets_E: torch.Tensor, name: str) -> torch.Tensor:
        """Rows of segment e (ending at offsets_E[e]) times w_EOI[e].T -> [N, O]; `name` keeps w's transposed view."""
        if grouped_mm_supported(x_NI, w_EOI):
            return grouped_gemm.grouped_mm(x_NI, self._views.transposed(name, w_EOI), offsets_E)
        counts = torch.diff(offsets_E, prepend=offsets_E.new_zeros(1)).tolist()
        segments = torch.split(x_NI, counts)
        return torch.cat([seg @ w_EOI[e].t() for e, seg in enumerate(segments)])


def _plus(y_NO: torch.Tensor, bias_EO: torch.Tensor | None, dispatch: SortedDispatch) -> torch.Tensor:
    """Each row's expert's bias."""
    return y_NO if bias_EO is None else y_NO + bias_EO[dispatch.expert_idx_N]
