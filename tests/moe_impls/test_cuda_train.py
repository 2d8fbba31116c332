"""On a GPU, train mode: every built-in implementation's output, input gradient and every weight gradient equal
the reference's on the same weights, in bf16 (sort_group on torch's grouped_mm, forward and backward) and in
fp32 (sort_group's per-segment fallback). Skipped without CUDA.

The rule is the runner's (suites/reference.py): max |impl - reference| <= RTOL[dtype] x max |reference|, per
tensor. The reference's own gradients must be non-zero, so a weight that backward never reached (None or zero
in both) fails rather than matches. The reference itself, dense_all, is checked against its fp32 CPU result.
"""

from __future__ import annotations

import pytest
import torch

import moe_impls
from moe_impls import MoEWeights
from suites.reference import tolerance_for
from tests.moe_impls.test_cuda import CFG

pytestmark = pytest.mark.gpu

IMPLS = ("loop", "padded", "sort_group", "dense_all")
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def train_step(name: str, weights: MoEWeights, x: torch.Tensor, grad_out: torch.Tensor) -> dict[str, torch.Tensor]:
    """The output, the expert choices, and the gradient of the input and of every parameter of `weights`."""
    layer = moe_impls.get(name)(weights).train()
    x = x.detach().requires_grad_()
    y, routing = layer(x)
    params = dict(weights.named_parameters())
    grads = torch.autograd.grad(y, [x, *params.values()], grad_outputs=grad_out, allow_unused=True)
    named = dict(zip(["input", *params], grads))
    return {"output": y.detach(), "experts": routing.expert_idx_N, **named}


def assert_matches(got: dict, ref: dict, dtype: str, who: str) -> None:
    assert torch.equal(got["experts"].cpu(), ref["experts"].cpu()), f"{who}: chose other experts than the reference"
    for what, expected in ref.items():
        if what == "experts":
            continue
        assert expected is not None and got[what] is not None, f"{who} {what}: no gradient"
        scale = float(expected.abs().max())
        assert scale > 0, f"{who} {what}: the reference's is all zero (backward did not reach it)"
        err, limit = float((got[what].float().cpu() - expected.float().cpu()).abs().max()), tolerance_for(dtype, scale)
        assert err <= limit, f"{who} {what}: max |got - reference| = {err:.3g} > {limit:.3g} (max |ref| {scale:.3g})"


def _inputs(tokens: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator(device="cuda").manual_seed(tokens)
    x, grad_out = torch.randn(2, tokens, CFG.d_model, device="cuda", generator=gen).to(dtype)
    return x, grad_out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens", [1, 7, 512])
def test_every_impl_trains_like_the_reference_on_cuda(dtype, tokens):
    """T=1 and T=7 leave most experts without rows: empty segments in grouped_mm and in its backward."""
    weights = MoEWeights(CFG, device="cuda", dtype=DTYPES[dtype], seed=0)
    x, grad_out = _inputs(tokens, DTYPES[dtype])
    ref = train_step(moe_impls.REFERENCE, weights, x, grad_out)
    for name in IMPLS:
        got = train_step(name, weights, x, grad_out)
        assert all(t is None or t.is_cuda for t in got.values()), f"{name}: a result left the GPU"
        assert_matches(got, ref, dtype, name)


@pytest.mark.parametrize("tokens", [7, 512])
def test_the_reference_trains_on_cuda_as_on_the_cpu(tokens):
    """fp32 only: bf16 logits tie often enough that CPU and CUDA top-k may break a tie differently."""
    weights = MoEWeights(CFG, device="cuda", dtype=torch.float32, seed=0)
    on_cpu = MoEWeights(CFG, device="cpu", dtype=torch.float32, seed=0)
    on_cpu.load_state_dict(weights.state_dict())  # one seed draws other weights on the CPU's generator
    x, grad_out = _inputs(tokens, torch.float32)
    ref = train_step(moe_impls.REFERENCE, on_cpu, x.cpu(), grad_out.cpu())
    assert_matches(train_step(moe_impls.REFERENCE, weights, x, grad_out), ref, "float32", "dense_all on cuda")
