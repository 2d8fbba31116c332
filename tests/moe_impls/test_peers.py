"""transformers' experts implementations as peers: same weights, same routing, same answers, known footprint."""

import pytest
import torch

import moe_impls
from moe_impls import MoEConfig, MoEWeights, SyntheticRouting, peers, registry
from suites.memory import measure_cpu

pytest.importorskip("transformers")
PEERS = list(peers.PEERS)

CONFIGS = [
    MoEConfig(d_model=16, d_ff=24, num_experts=4, top_k=2),
    MoEConfig(d_model=32, d_ff=16, num_experts=8, top_k=3, normalize_topk=False, router="sigmoid_topk"),
    MoEConfig(d_model=24, d_ff=8, num_experts=6, top_k=1, router="noisy_topk"),
    MoEConfig(d_model=16, d_ff=16, num_experts=8, top_k=2, synthetic=SyntheticRouting("zipf", zipf_s=1.5)),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"E{c.num_experts}k{c.top_k}-{c.router}")
@pytest.mark.parametrize("name", PEERS)
def test_peer_agrees_with_the_reference_forward_and_backward(name, cfg):
    weights = MoEWeights(cfg, seed=3)
    gen = torch.Generator().manual_seed(cfg.num_experts)
    x = torch.randn(2, 19, cfg.d_model, generator=gen)
    x_ref, x_peer = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ref, routing_ref = moe_impls.get("dense_all")(weights)(x_ref)
    y_ref.sum().backward()
    grads_ref = [p.grad.clone() for p in weights.parameters() if p.grad is not None]
    weights.zero_grad(set_to_none=True)
    y, routing = moe_impls.resolve(name)(weights)(x_peer)
    y.sum().backward()
    grads = [p.grad for p in weights.parameters() if p.grad is not None]
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x_peer.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-5)
    assert torch.equal(routing.expert_idx_TK, routing_ref.expert_idx_TK)
    assert routing.computed_rows == 2 * 19 * cfg.top_k


def test_peers_share_the_weights_instead_of_copying_them():
    weights = MoEWeights(CONFIGS[0])
    layer = moe_impls.resolve("hf_grouped_mm")(weights)
    assert layer.hf.gate_up_proj is weights.experts.gate_up_proj and layer.hf.down_proj is weights.experts.down_proj
    assert layer.hf.config._experts_implementation == "grouped_mm"


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"activation": "gelu"}, "SwiGLU only"),
        ({"capacity_factor": 1.0}, "dropless"),
        ({"router": "expert_choice"}, "expert-choice"),
    ],
)
def test_what_transformers_cannot_express_is_refused_with_its_reason(change, why):
    cfg = MoEConfig(d_model=16, d_ff=16, num_experts=4, top_k=2, **change)
    impl = moe_impls.resolve("hf_eager")
    assert why in impl.unsupported(cfg)
    with pytest.raises(ValueError, match=why):
        impl(MoEWeights(cfg))
    assert moe_impls.resolve("sort_group").unsupported(cfg) is None


@pytest.mark.parametrize("mode", ["forward", "train"])
def test_batched_mm_footprint_prediction_matches_the_measured_peak(mode):
    cfg = MoEConfig(d_model=32, d_ff=64, num_experts=8, top_k=2)
    weights = MoEWeights(cfg)
    layer = moe_impls.resolve("hf_batched_mm")(weights)
    x = torch.randn(96, 32)

    def call():
        if mode == "forward":
            with torch.no_grad():
                return layer(x)
        out, _ = layer(x.clone().requires_grad_())
        out.sum().backward()
        layer.zero_grad(set_to_none=True)

    call()
    _, measured = measure_cpu(call)
    predicted = moe_impls.resolve("hf_batched_mm").predicted_bytes(cfg, 96, torch.float32, mode)
    assert predicted == pytest.approx(measured.call_peak_bytes, rel=0.03)
    # it grows with tokens x top_k x expert size: the 4096-token point of the cpu suite's small shape
    big = MoEConfig(d_model=256, d_ff=512, num_experts=8, top_k=2)
    assert moe_impls.resolve("hf_batched_mm").predicted_bytes(big, 4096, torch.float32, "forward") > 12e9
    assert moe_impls.resolve("hf_grouped_mm").predicted_bytes(big, 4096, torch.float32, "forward") is None


def test_without_transformers_the_peers_are_absent_and_say_why(monkeypatch):
    why = "transformers is not installed (pip install 'moe-bench[peers]')"
    monkeypatch.setattr(peers, "_UNAVAILABLE", why)
    monkeypatch.setattr(registry, "_IMPLS", {k: v for k, v in registry._IMPLS.items() if k not in peers.PEERS})
    monkeypatch.setattr(registry, "_UNAVAILABLE", {})
    peers.register_peers(why)
    assert set(peers.absent()) == set(PEERS) and not set(PEERS) & set(moe_impls.names())
    with pytest.raises(KeyError, match="transformers is not installed"):
        moe_impls.resolve("hf_eager")


def test_unavailable_reason_reads_the_installed_version(monkeypatch):
    assert peers.unavailable_reason() is None
    monkeypatch.setattr(peers.importlib.metadata, "version", lambda name: "4.57.1")
    assert "4.57.1 has no experts_implementation" in peers.unavailable_reason()
    monkeypatch.setattr(peers.importlib.util, "find_spec", lambda name: None)
    assert "not installed" in peers.unavailable_reason()
