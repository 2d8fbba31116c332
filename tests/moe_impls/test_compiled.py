"""`<impl>+compile`: torch.compile of an implementation computes what its eager twin computes."""

import pytest
import torch

import moe_impls
from moe_impls import MoEConfig, MoEWeights, RoutingRecord
from moe_impls.compiled import CompiledLayer


def test_compiled_variant_matches_its_eager_twin_and_returns_the_routing_record():
    cfg = MoEConfig(d_model=16, d_ff=32, num_experts=4, top_k=2)
    weights = MoEWeights(cfg)
    eager = moe_impls.resolve("sort_group")(weights)
    compiled = moe_impls.resolve("sort_group+compile")(weights)
    assert isinstance(compiled, CompiledLayer) and compiled.eager.weights is weights
    assert moe_impls.resolve("sort_group+compile").compiled
    for tokens in (8, 12):  # the second count recompiles once with the token count symbolic
        x = torch.randn(tokens, 16)
        with torch.no_grad():
            y_eager, routing_eager = eager(x)
            y, routing = compiled(x)
        torch.testing.assert_close(y, y_eager, rtol=1e-5, atol=1e-6)
        assert isinstance(routing, RoutingRecord) and torch.equal(routing.expert_idx_N, routing_eager.expert_idx_N)
        assert routing.computed_rows == tokens * 2


def test_compile_suffix_composes_with_every_name_but_not_twice():
    assert moe_impls.resolve("hf_eager+compile").layer_cls is moe_impls.get("hf_eager")
    assert moe_impls.resolve("tests.plugin_example:make_layer+compile").kind == "plugin+compile"
    with pytest.raises(KeyError, match="compiled twice"):
        moe_impls.resolve("loop+compile+compile")
    with pytest.raises(KeyError, match="unknown implementation 'nope'"):
        moe_impls.resolve("nope+compile")


def test_compiled_sort_group_keeps_torchs_grouped_gemm_in_one_graph_forward_and_train():
    """float32 on CPU: torch.compile's rule for aten._grouped_mm is bf16 only, which sent the compiled layer to
    the per-segment loop (a host sync, a graph break, a graph unrolled over the experts)."""
    from torch._dynamo.utils import counters

    cfg = MoEConfig(d_model=16, d_ff=32, num_experts=4, top_k=2)
    weights = MoEWeights(cfg)
    eager = moe_impls.resolve("sort_group")(weights)
    compiled = moe_impls.resolve("sort_group+compile")(weights)
    x = torch.randn(8, 16)
    y_eager, _ = eager(x)
    y_eager.square().sum().backward()
    grads_eager = [p.grad.clone() for p in weights.parameters()]
    weights.zero_grad()
    torch._dynamo.reset()
    counters.clear()
    y, _ = compiled(x)
    y.square().sum().backward()
    assert dict(counters["graph_break"]) == {}
    torch.testing.assert_close(y, y_eager, rtol=1e-5, atol=1e-6)
    for p, grad in zip(weights.parameters(), grads_eager, strict=True):
        torch.testing.assert_close(p.grad, grad, rtol=1e-5, atol=1e-5)


def test_traced_grouped_mm_passes_torchs_custom_op_checks_and_its_backward_is_the_kernels():
    """Its fake's shapes, its schema and registrations (opcheck), and gradients equal to aten's own backward."""
    from moe_impls.grouped_gemm import aten_grouped_mm, traced_grouped_mm

    offsets = torch.tensor([3, 3, 7, 12], dtype=torch.int32)  # an empty segment among them
    x = torch.randn(12, 8, requires_grad=True)
    w = torch.randn(4, 16, 8).transpose(-2, -1).requires_grad_()  # [E, I, O], a parameter [E, O, I] seen transposed
    torch.library.opcheck(traced_grouped_mm, (x, w, offsets))
    g = torch.randn(12, 16)
    ours = torch.autograd.grad(traced_grouped_mm(x, w, offsets), (x, w), g)
    theirs = torch.autograd.grad(aten_grouped_mm(x, w, offs=offsets), (x, w), g)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b)
