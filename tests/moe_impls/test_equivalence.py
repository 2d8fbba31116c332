"""Every implementation computes what the O(E) reference computes: outputs and all gradients."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import moe_impls
from moe_impls import MoEConfig, MoEWeights

TOL = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.bfloat16: dict(rtol=3e-2, atol=3e-2)}
IMPLS = [n for n in moe_impls.names() if n != moe_impls.REFERENCE]


@st.composite
def points(draw):
    E = draw(st.sampled_from([1, 2, 8, 64]))
    cfg = MoEConfig(
        d_model=16,
        d_ff=draw(st.sampled_from([8, 24])),
        num_experts=E,
        top_k=draw(st.sampled_from(sorted({1, min(2, E), E}))),
        activation=draw(st.sampled_from(moe_impls.ACTIVATIONS)),
        router=draw(st.sampled_from(moe_impls.ROUTERS)),
        normalize_topk=draw(st.booleans()),
        capacity_factor=draw(st.sampled_from([None, None, 1.0, 1.5])),
    )
    tokens = draw(st.sampled_from([0, 1, 7, 256]))
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16]))
    training = draw(st.booleans())
    return cfg, tokens, dtype, training


def run(name, weights, x, training):
    layer = moe_impls.get(name)(weights).train(training)
    x = x.detach().requires_grad_()
    y, routing = layer(x)
    params = [x, weights.router.weight, weights.experts.w_in_EHD, weights.experts.w_out_EDF]
    if not y.requires_grad:  # no tokens reached any expert (T = 0): every gradient is zero
        return y, routing, [torch.zeros_like(p) for p in params]
    loss = (y.float() * torch.linspace(-1, 1, y.numel()).view_as(y)).sum()
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return y, routing, [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]


@given(points())
def test_every_impl_matches_reference(point):
    cfg, tokens, dtype, training = point
    weights = MoEWeights(cfg, dtype=dtype, seed=tokens)
    x = torch.randn(tokens, cfg.d_model, generator=torch.Generator().manual_seed(1)).to(dtype)
    y_ref, routing_ref, grads_ref = run(moe_impls.REFERENCE, weights, x, training)
    for name in IMPLS:
        if moe_impls.get(name).unsupported(cfg):  # transformers' peers: SwiGLU, dropless, token choice only
            continue
        y, routing, grads = run(name, weights, x, training)
        assert torch.equal(routing.expert_idx_N, routing_ref.expert_idx_N), name
        torch.testing.assert_close(y, y_ref, **TOL[dtype], msg=lambda m, n=name: f"{n} output: {m}")
        for g, g_ref, what in zip(grads, grads_ref, ["input", "router", "w_in", "w_out"]):
            torch.testing.assert_close(g, g_ref, **TOL[dtype], msg=lambda m, n=name, w=what: f"{n} grad {w}: {m}")


@pytest.mark.parametrize("shape", [(3, 5), (2, 3, 5), (30,)])
def test_any_leading_dims_are_restored(shape):
    cfg = MoEConfig(d_model=shape[-1] if len(shape) > 1 else 30, d_ff=8, num_experts=4, top_k=2)
    shape = shape if len(shape) > 1 else (cfg.d_model,)
    weights = MoEWeights(cfg)
    x = torch.randn(shape)
    for name in moe_impls.names():
        if moe_impls.get(name).unsupported(cfg):
            continue
        y, routing = moe_impls.get(name)(weights)(x)
        assert y.shape == x.shape and routing.num_tokens == x.numel() // cfg.d_model


def test_dropless_padded_equals_loop_and_counts_padding():
    cfg = MoEConfig(d_model=16, d_ff=32, num_experts=8, top_k=2)
    weights = MoEWeights(cfg, seed=3)
    x = torch.randn(100, 16)
    y_loop, routing_loop = moe_impls.get("loop")(weights)(x)
    y_pad, routing_pad = moe_impls.get("padded")(weights)(x)
    torch.testing.assert_close(y_pad, y_loop)
    assert routing_pad.computed_rows == 8 * int(routing_pad.tokens_per_expert_E.max())
    assert routing_loop.computed_rows == 200


def test_implementations_share_parameters():
    weights = MoEWeights(MoEConfig(d_model=8, d_ff=8, num_experts=2, top_k=1))
    a, b = moe_impls.get("loop")(weights), moe_impls.get("sort_group")(weights)
    assert [p.data_ptr() for p in a.parameters()] == [p.data_ptr() for p in b.parameters()]


def test_one_expert_equals_dense_ffn():
    cfg = MoEConfig(d_model=16, d_ff=32, num_experts=1, top_k=1)
    weights = MoEWeights(cfg, seed=0)
    dense = moe_impls.DenseFFN(16, 32)
    with torch.no_grad():
        dense.gate_up_proj.copy_(weights.experts.gate_up_proj[0])
        dense.down_proj.copy_(weights.experts.down_proj[0])
    x = torch.randn(10, 16)
    for name in moe_impls.names():
        torch.testing.assert_close(moe_impls.get(name)(weights)(x)[0], dense(x))


def test_capturable_only_where_forward_never_reads_back_to_the_host():
    base = dict(d_model=16, d_ff=32, num_experts=4, top_k=2)
    plain = MoEWeights(MoEConfig(**base))
    assert moe_impls.get("sort_group")(plain).capturable and moe_impls.get("dense_all")(plain).capturable
    assert not moe_impls.get("loop")(plain).capturable and not moe_impls.get("padded")(plain).capturable
    for extra in (dict(capacity_factor=1.0), dict(synthetic=moe_impls.SyntheticRouting("zipf"))):
        weights = MoEWeights(MoEConfig(**base, **extra))
        assert not moe_impls.get("sort_group")(weights).capturable, extra
    unaligned = MoEWeights(MoEConfig(d_model=15, d_ff=32, num_experts=4, top_k=2))  # falls back to split-by-counts
    assert not moe_impls.get("sort_group")(unaligned).capturable


@pytest.mark.parametrize("training", [False, True])
def test_sort_group_where_only_the_second_matmuls_rows_are_aligned(training):
    """d_model 30, d_ff 40 (GELU, fp32): the second matmul's contraction rows (160 bytes) are aligned but its
    output rows (120 bytes) are not, which the train step's grouped_mm backward rejects."""
    cfg = MoEConfig(d_model=30, d_ff=40, num_experts=4, top_k=2, activation="gelu")
    weights = MoEWeights(cfg, seed=0)
    x = torch.randn(16, cfg.d_model, generator=torch.Generator().manual_seed(1))
    y_ref, _, grads_ref = run(moe_impls.REFERENCE, weights, x, training)
    y, _, grads = run("sort_group", weights, x, training)
    torch.testing.assert_close(y, y_ref, **TOL[torch.float32])
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, **TOL[torch.float32])
