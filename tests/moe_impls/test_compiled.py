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
