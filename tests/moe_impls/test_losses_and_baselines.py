"""Auxiliary losses at values derived by hand, and the dense baselines' sizes."""

import pytest
import torch

import moe_impls
from moe_impls import MoEConfig, MoEWeights, SyntheticRouting
from moe_impls.losses import cv_squared, importance_loss, load_loss, smooth_load, switch_loss, z_loss
from moe_impls.routing import Router

E, K, T = 8, 2, 64


def routed(cfg, router_weight, x=None, training=False):
    weights = MoEWeights(cfg)
    with torch.no_grad():
        weights.router.weight.copy_(router_weight)
    return Router(cfg)(weights, torch.randn(T, cfg.d_model) if x is None else x, training)


def test_cv_squared_by_hand():
    # [1, 2, 3]: mean 2, population variance 2/3 -> CV^2 = (2/3) / 4 = 1/6
    torch.testing.assert_close(cv_squared(torch.tensor([1.0, 2.0, 3.0])), torch.tensor(1 / 6))


def test_uniform_routing_gives_switch_alpha_and_zero_importance_cv():
    # A zero router gives every expert probability 1/E; uniform synthetic routing gives f_i = 1/E.
    # Switch: alpha * E * sum_i (1/E)(1/E) = alpha. Importance: every expert gets T*K/E gates of 1/K -> equal -> CV^2 = 0.
    cfg = MoEConfig(d_model=16, d_ff=8, num_experts=E, top_k=K, synthetic=SyntheticRouting("uniform"))
    r = routed(cfg, torch.zeros(E, 16))
    torch.testing.assert_close(switch_loss(r, alpha=0.01), torch.tensor(0.01))
    torch.testing.assert_close(importance_loss(r, weight=0.1), torch.tensor(0.0))


def test_total_collapse_values():
    # Top-1, every token to expert 0 with probability ~1: Importance = [T, 0, ..., 0].
    # mean = T/E, population var = (1/E)(T - T/E)^2 + ((E-1)/E)(T/E)^2 = T^2 (E-1)/E^2, so CV^2 = E - 1.
    # Switch: f = (1, 0, ...), P ~ (1, 0, ...) -> alpha * E * 1 = alpha * E.
    cfg = MoEConfig(d_model=16, d_ff=8, num_experts=E, top_k=1)
    x = torch.ones(T, 16)
    w = torch.zeros(E, 16)
    w[0] = 10.0
    r = routed(cfg, w, x)
    assert r.tokens_per_expert_E.tolist() == [T] + [0] * (E - 1)
    torch.testing.assert_close(importance_loss(r, weight=1.0), torch.tensor(float(E - 1)))
    torch.testing.assert_close(switch_loss(r, alpha=0.01), torch.tensor(0.01 * E))


def test_z_loss_by_hand():
    # Zero logits: logsumexp = log E for every token -> z = (log E)^2.
    cfg = MoEConfig(d_model=16, d_ff=8, num_experts=E, top_k=K)
    r = routed(cfg, torch.zeros(E, 16))
    torch.testing.assert_close(z_loss(r, weight=1.0), torch.log(torch.tensor(float(E))) ** 2)


def test_load_loss_needs_noise_and_is_differentiable():
    cfg = MoEConfig(d_model=16, d_ff=8, num_experts=E, top_k=K, router="noisy_topk")
    weights = MoEWeights(cfg)
    r = Router(cfg)(weights, torch.randn(T, 16), True)
    loss = load_loss(r, top_k=K)
    assert loss >= 0
    grad = torch.autograd.grad(loss, [weights.router.weight, weights.router.noise_weight])
    assert all(g.abs().sum() > 0 for g in grad)
    with pytest.raises(ValueError, match="noisy_topk"):
        load_loss(Router(cfg)(weights, torch.randn(T, 16), False), top_k=K)


def test_smooth_load_matches_sampled_frequencies():
    # One token under 20000 independent noise draws: the mean of P(x, i) over the draws estimates the chance that
    # expert i is in the top k, which is also the observed frequency of i among the draws' choices.
    cfg = MoEConfig(d_model=16, d_ff=8, num_experts=4, top_k=1, router="noisy_topk", noise_seed=1)
    weights = MoEWeights(cfg)
    with torch.no_grad():
        weights.router.weight.mul_(0.3)
    draws = 20000
    r = Router(cfg)(weights, torch.randn(1, 16).expand(draws, 16).contiguous(), True)
    frequency = r.tokens_per_expert_E.float() / draws
    assert frequency.max() < 0.95, "pick a point where the noise really moves the choice"
    torch.testing.assert_close(smooth_load(r, top_k=1) / draws, frequency, atol=0.02, rtol=0)


def test_baselines_match_parameters_and_flops():
    cfg = MoEConfig(d_model=32, d_ff=48, num_experts=8, top_k=2)
    pm, fm = moe_impls.param_matched(cfg), moe_impls.flop_matched(cfg)
    expert_params = MoEWeights(cfg).experts
    assert sum(p.numel() for p in pm.parameters()) == sum(p.numel() for p in expert_params.parameters())
    assert fm.d_ff == 2 * 48 and pm.d_ff == 8 * 48
    assert fm(torch.randn(5, 32)).shape == (5, 32)
