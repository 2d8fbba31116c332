"""Routers, capacity drops and synthetic skews, checked against hand-derived values."""

import math

import pytest
import torch

import moe_impls
from moe_impls import MoEConfig, MoEWeights, SyntheticRouting
from moe_impls.routing import Router, synthetic_expert_idx


def record(cfg, x, router_weight=None, training=False, dtype=torch.float32):
    weights = MoEWeights(cfg, dtype=dtype)
    if router_weight is not None:
        with torch.no_grad():
            weights.router.weight.copy_(router_weight)
    return Router(cfg)(weights, x, training)


def test_capacity_drops_by_choice_major_priority():
    # T=2, E=3, K=2, cf=0.5 -> C = ceil(0.5 * 2 * 2 / 3) = 1 slot per expert.
    # Token 0 ranks e0 > e1, token 1 ranks e1 > e2. First choices go first: (t0, e0) and (t1, e1) take their slots,
    # then second choices: (t0, e1) finds e1 full and is dropped, (t1, e2) fits.
    cfg = MoEConfig(d_model=2, d_ff=4, num_experts=3, top_k=2, capacity_factor=0.5)
    assert cfg.capacity(2) == 1
    w = torch.tensor([[3.0, 0.0], [2.0, 3.0], [0.0, 2.0]])
    r = record(cfg, torch.eye(2), w)
    kept = sorted(zip(r.token_idx_N.tolist(), r.expert_idx_N.tolist()))
    assert kept == [(0, 0), (1, 1), (1, 2)]
    assert int(r.num_dropped) == 1
    assert r.tokens_per_expert_E.tolist() == [1, 1, 1]


def test_dropped_token_gets_zero_output_in_every_impl():
    # T=4, E=2, K=1, cf=1 -> C=2; tokens 0,1,2 prefer expert 0, so token 2 overflows and is dropped.
    cfg = MoEConfig(d_model=2, d_ff=4, num_experts=2, top_k=1, capacity_factor=1.0)
    weights = MoEWeights(cfg)
    with torch.no_grad():
        weights.router.weight.copy_(torch.tensor([[5.0, 0.0], [0.0, 5.0]]))
    x = torch.tensor([[1.0, 0.0], [1.0, 0.1], [1.0, 0.2], [0.0, 1.0]])
    for name in moe_impls.names():
        if moe_impls.get(name).unsupported(cfg):  # transformers' peers are dropless
            continue
        y, r = moe_impls.get(name)(weights)(x)
        assert int(r.num_dropped) == 1, name
        assert torch.equal(y[2], torch.zeros(2)), name
        assert y[0].abs().sum() > 0 and y[3].abs().sum() > 0, name


def test_softmax_topk_renormalises_only_when_asked():
    x = torch.randn(50, 16)
    for normalize in (True, False):
        cfg = MoEConfig(d_model=16, d_ff=8, num_experts=8, top_k=2, normalize_topk=normalize)
        r = record(cfg, x)
        sums = r.weight_TK.sum(-1)
        expected = torch.ones(50) if normalize else r.probs_TE.topk(2, dim=-1).values.sum(-1)
        torch.testing.assert_close(sums, expected)


@pytest.mark.parametrize("router", ["softmax_topk", "noisy_topk", "sigmoid_topk"])
@pytest.mark.parametrize("normalize", [True, False])
def test_what_the_record_derives_on_use_equals_its_definition(router, normalize):
    """Counts, token ids, the flat form and the full softmax are derived only when read; each equals what the
    router used to build eagerly, and, as nothing is cached, follows the grad mode of whoever reads it: a loss
    computed after the forward still trains the router, and a statistic read under no_grad builds no graph."""
    cfg = MoEConfig(d_model=8, d_ff=4, num_experts=6, top_k=2, router=router, normalize_topk=normalize)
    weights, x = MoEWeights(cfg), torch.randn(10, 8, generator=torch.Generator().manual_seed(0))
    r = Router(cfg)(weights, x, training=True)
    assert torch.equal(r.token_idx_N, torch.arange(10).repeat_interleave(2))
    assert torch.equal(r.expert_idx_N, r.expert_idx_TK.reshape(-1))
    assert torch.equal(r.tokens_per_expert_E, torch.bincount(r.expert_idx_N, minlength=6))
    assert int(r.num_dropped) == 0 and r.gates_TE.shape == (10, 6)
    if router != "sigmoid_topk":
        assert torch.allclose(r.probs_TE, torch.softmax(r.logits_TE, dim=-1))
        expected = r.probs_TE.gather(1, r.expert_idx_TK)
        if normalize or router == "noisy_topk":
            expected = expected / expected.sum(-1, keepdim=True)
        assert torch.allclose(r.weight_TK, expected, rtol=1e-6, atol=0)
    order = torch.arange(20).flip(0)
    with torch.no_grad():
        assert not r.in_order(order)[1].requires_grad
        if r.computed_probs_TE is None:  # derived here, not in the forward
            assert not r.probs_TE.requires_grad
    token_idx_M, weight_M1 = r.in_order(order)
    assert torch.equal(token_idx_M, r.token_idx_N.flip(0)) and torch.equal(weight_M1[:, 0], r.weight_N.flip(0))
    ramp = torch.arange(20.0)  # not a plain sum: renormalised weights sum to 1 per token, whose gradient is 0
    ((r.weight_N * ramp).sum() + (weight_M1.squeeze(-1) * ramp).sum() + r.probs_TE[:, 0].sum()).backward()
    assert weights.router.weight.grad is not None and weights.router.weight.grad.abs().sum() > 0


def test_sigmoid_bias_changes_choice_not_weight():
    cfg = MoEConfig(d_model=16, d_ff=8, num_experts=8, top_k=2, router="sigmoid_topk", normalize_topk=False)
    weights = MoEWeights(cfg)
    x = torch.randn(64, 16)
    before = Router(cfg)(weights, x, False)
    weights.router.e_score_correction_bias[3] = 100.0
    after = Router(cfg)(weights, x, False)
    assert (after.expert_idx_TK == 3).any(-1).all()
    torch.testing.assert_close(after.weight_TK, torch.sigmoid(after.logits_TE).gather(1, after.expert_idx_TK))
    assert not torch.equal(before.expert_idx_TK, after.expert_idx_TK)


def test_noisy_topk_is_seeded_and_only_noisy_in_training():
    cfg = MoEConfig(d_model=16, d_ff=8, num_experts=8, top_k=2, router="noisy_topk", noise_seed=7)
    weights = MoEWeights(cfg)
    x = torch.randn(32, 16)
    a, b = Router(cfg)(weights, x, True), Router(cfg)(weights, x, True)
    torch.testing.assert_close(a.logits_TE, b.logits_TE)
    assert not torch.allclose(a.logits_TE, a.clean_logits_TE)
    ev = Router(cfg)(weights, x, False)
    torch.testing.assert_close(ev.logits_TE, ev.clean_logits_TE)
    # Outside the top-k the logit is -inf before the softmax, so the kept gates are a softmax over k logits.
    top = a.logits_TE.gather(1, a.expert_idx_TK)
    torch.testing.assert_close(a.weight_TK, torch.softmax(top, -1))


def test_expert_choice_gives_each_expert_its_top_c_tokens():
    cfg = MoEConfig(d_model=16, d_ff=8, num_experts=4, top_k=2, router="expert_choice", capacity_factor=1.5)
    x = torch.randn(10, 16)
    r = record(cfg, x)
    C = math.ceil(10 * 1.5 / 4)
    assert r.tokens_per_expert_E.tolist() == [C] * 4
    for e in range(4):
        chosen = set(r.token_idx_N[r.expert_idx_N == e].tolist())
        assert chosen == set(r.probs_TE[:, e].topk(C).indices.tolist())


@pytest.mark.parametrize("E,K,T", [(8, 2, 100), (64, 8, 333), (4, 4, 5), (1, 1, 9)])
@pytest.mark.parametrize(
    "spec",
    [SyntheticRouting("uniform"), SyntheticRouting("zipf", zipf_s=1.5), SyntheticRouting("hot", hot_fraction=0.25)]
    + [SyntheticRouting("collapse")],
)
def test_synthetic_loads_follow_spec_with_distinct_experts(E, K, T, spec):
    idx = synthetic_expert_idx(T, E, K, spec)
    assert idx.shape == (T, K)
    assert all(len(set(row)) == K for row in idx.tolist()), "a token got the same expert twice"
    loads = torch.bincount(idx.reshape(-1), minlength=E)
    assert int(loads.sum()) == T * K and int(loads.max()) <= T
    if spec.kind == "uniform":
        assert int(loads.max() - loads.min()) <= 1
    if spec.kind == "collapse":
        assert loads[:K].tolist() == [T] * K
    if spec.kind == "hot" and E > 1 and 0.25 * K <= 1:
        assert abs(int(loads[0]) - 0.25 * T * K) <= 1
    if spec.kind == "zipf" and E > K:
        assert loads.tolist() == sorted(loads.tolist(), reverse=True)


def test_synthetic_routing_still_pays_for_and_uses_the_router():
    spec = SyntheticRouting("hot", hot_fraction=0.5, seed=3)
    cfg = MoEConfig(d_model=16, d_ff=8, num_experts=8, top_k=2, synthetic=spec)
    r = record(cfg, torch.randn(40, 16))
    assert int((r.expert_idx_TK == 0).sum()) == 40
    torch.testing.assert_close(r.weight_TK.sum(-1), torch.ones(40))


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(top_k=9), "top_k"),
        (dict(d_model=0), "d_model"),
        (dict(d_ff=-1), "d_ff"),
        (dict(capacity_factor=0.0), "capacity_factor"),
        (dict(activation="relu"), "activation"),
        (dict(router="hash"), "router"),
        (dict(synthetic=SyntheticRouting("hot", hot_fraction=0.9)), "hot_fraction"),
    ],
)
def test_bad_config_is_one_line_naming_the_field(kwargs, field):
    base = dict(d_model=8, d_ff=8, num_experts=8, top_k=2)
    with pytest.raises(ValueError, match=field) as err:
        MoEConfig(**{**base, **kwargs})
    assert "\n" not in str(err.value)


def test_bad_input_is_one_line_naming_expected_and_got():
    layer = moe_impls.get("loop")(MoEWeights(MoEConfig(d_model=8, d_ff=8, num_experts=2, top_k=1)))
    with pytest.raises(ValueError, match=r"\[\.\.\., 8\], got \(3, 7\)"):
        layer(torch.randn(3, 7))
    with pytest.raises(ValueError, match="expected dtype torch.float32.*got torch.bfloat16"):
        layer(torch.randn(3, 8, dtype=torch.bfloat16))
