"""What every implementation is checked against, and how close it must come: the runner, the expert-parallel
rows and the pytest-benchmark views all use these, so a row is `ok` under one rule wherever it runs."""

from __future__ import annotations

import torch
from torch import nn

import moe_impls
from moe_impls import MoEWeights

# max |impl - reference| allowed, relative to the reference's largest magnitude
RTOL = {"float32": 1e-4, "bfloat16": 3e-2, "float16": 5e-3}
# dense_all materialises [E, T, H]; above this many bytes the reference is `loop` (tested equal to dense_all)
DENSE_REFERENCE_MAX_BYTES = 1 << 30
SMALLEST_SCALE = 1e-6  # an all-zero reference still allows rounding noise, never a zero tolerance


def reference_layer(weights: MoEWeights, x: torch.Tensor) -> tuple[str, nn.Module]:
    """The reference's name and layer over `weights` for the input x [T, D]."""
    cfg = weights.cfg
    dense_bytes = cfg.num_experts * x.shape[0] * cfg.expert_in_features * x.element_size()
    name = moe_impls.REFERENCE if dense_bytes <= DENSE_REFERENCE_MAX_BYTES else "loop"
    return name, moe_impls.get(name)(weights)


def tolerance_for(dtype: str, ref_max_abs: float) -> float:
    """The largest |impl - reference| allowed in `dtype` when the reference's largest magnitude is ref_max_abs."""
    return RTOL[dtype] * max(ref_max_abs, SMALLEST_SCALE)


def error_and_tolerance(out, grad, ref_out, ref_grad, dtype: str) -> tuple[float, float]:
    """Largest deviation from the reference (the input gradient rescaled to the output's scale) and its limit."""
    ref_max_abs = float(ref_out.abs().max()) if ref_out.numel() else 0.0
    scale = max(ref_max_abs, SMALLEST_SCALE)
    err = float((out.float() - ref_out.float()).abs().max()) if out.numel() else 0.0
    if grad is not None and ref_grad is not None and grad.numel():
        grad_scale = max(float(ref_grad.abs().max()), SMALLEST_SCALE)
        err = max(err, float((grad.float() - ref_grad.float()).abs().max()) * scale / grad_scale)
    return err, tolerance_for(dtype, ref_max_abs)
