"""A model point's rows: one transformers sparse MoE block at the model's own dimensions (moe_impls/hf_models/),
each row the same block, with the same weights and input, under one experts implementation (transformers'
`eager`, `grouped_mm`, `batched_mm`, the GPU kernels where installed, and ours, `moe_bench_*`). The block's
router, shared experts and gates run unchanged in every row; `eager` is the reference every row is checked
against (output and input gradient) before it is timed."""

from __future__ import annotations

import torch
from torch import nn

from analysis import flops
from moe_impls import hf_models
from moe_impls.hf_experts import HFExperts
from suites.calls import check_call
from suites.checks import CheckedRow, PointInputs, Reference
from suites.memory import measure_memory
from suites.reference import error_and_tolerance

REFERENCE = "eager"
TOP_K_KEYS = ("num_experts_per_tok", "num_experts_per_token", "moe_topk", "moe_top_k", "moe_k", "top_k_experts")


class ExpertsSwitch(nn.Module):
    """The block under experts implementation `name`, set before every call (transformers reads it at each
    forward), so the rows of a point share one block and differ only in how its experts run."""

    capturable = False  # transformers' routers and eager loops read device values on the host

    def __init__(self, block: nn.Module, name: str) -> None:
        super().__init__()
        self.block, self.name = block, name

    def forward(self, x_TD: torch.Tensor) -> tuple[torch.Tensor, None]:
        hf_models.set_experts_implementation(self.block, self.name)
        return hf_models.block_forward(self.block, x_TD), None


def implementations_known() -> list[str]:
    """Every registered experts implementation: transformers' and ours."""
    hf_models.register_ours()
    return hf_models.implementation_names()


def implementations(device: torch.device | str) -> tuple[str, ...]:
    """Every experts implementation that can run on `device`: the reference first, then transformers' and ours."""
    cuda = torch.device(device).type == "cuda"
    names = [n for n in implementations_known() if cuda or not hf_models.needs_gpu_kernel(n)]
    return (REFERENCE, *(n for n in names if n != REFERENCE))


def dimensions(model: str) -> dict:
    """The routed experts' d_model, d_ff, experts, top-k and activation of `model`'s MoE block, read from the
    block itself, built on the meta device (nothing allocated)."""
    config = hf_models.default_config(model)
    block = hf_models.build_block(config, device="meta")
    experts = next(hf_models.experts_modules(block), None)
    if experts is None:
        raise ValueError(f"{model}: its MoE block has no experts module that transformers' experts interface runs")
    view = HFExperts(experts)
    (num_experts, _, d_model), d_ff = view.w_in_EHD.shape, view.w_out_EDF.shape[-1]
    text = hf_models.moe_config(config)
    top_k = next((getattr(text, k) for k in TOP_K_KEYS if isinstance(getattr(text, k, None), int)), None)
    if top_k is None:
        raise ValueError(f"{model}: no top-k in its config (looked for {', '.join(TOP_K_KEYS)})")
    activation = "swiglu" if experts.has_gate else "gelu"
    return dict(d_model=d_model, d_ff=d_ff, num_experts=num_experts, top_k=top_k, activation=activation)


def build(model: str, device: torch.device, dtype: torch.dtype, seed: int) -> nn.Module:
    """The model's MoE block, seeded, with ours registered beside transformers' implementations."""
    hf_models.register_ours()
    return hf_models.build_block(hf_models.default_config(model), device=device, dtype=dtype, seed=seed)


def reference(inputs: PointInputs) -> Reference:
    layer = ExpertsSwitch(inputs.weights, REFERENCE)
    out, grad, _ = check_call(layer, inputs.x, inputs.grad_out, inputs.mode)
    return Reference(REFERENCE, layer, out, grad, None)


def check_model_row(
    name: str, inputs: PointInputs, ref: Reference, skip: str | None, predicted: int | None
) -> dict | CheckedRow:
    """The block under `name`, called once and compared with `eager`; a CheckedRow once it matched. `skip` and
    `predicted` are the point's fit decision for the row (suites/fit.py)."""
    if skip:
        return {"status": "skipped", "error": skip, "predicted_mem_bytes": predicted}
    point, x, block = inputs.point, inputs.x, inputs.weights
    layer = ExpertsSwitch(block, name)
    (out, grad, _), memory = measure_memory(lambda: check_call(layer, x, inputs.grad_out, point.mode), x.device, layer)
    err, tolerance = error_and_tolerance(out, grad, ref.out, ref.grad, point.dtype)
    check = {"max_abs_err": err, "tolerance": tolerance, "predicted_mem_bytes": predicted}
    if not err <= tolerance:
        return {**check, "status": "wrong", "error": f"max |out - {REFERENCE}| = {err:.3g} > {tolerance:.3g}"}
    weight_bytes = sum(p.numel() * p.element_size() for p in block.parameters())
    cfg = point.moe_config()  # the routed experts and the router: shared experts and gates are not counted
    row_flops = flops.moe_flops(cfg, point.tokens, point.tokens * cfg.top_k, point.mode)
    return CheckedRow(name, check, [layer], row_flops, weight_bytes, weight_bytes, memory, pool=name, graph_ok=False)


@torch.no_grad()
def reinit(block: nn.Module, inputs: PointInputs, seed: int) -> None:
    """The block's weights as `build` drew them (after a row wrote to them)."""
    point = inputs.point
    fresh = build(point.model, inputs.x.device, getattr(torch, point.dtype), seed)
    block.load_state_dict(fresh.state_dict())
