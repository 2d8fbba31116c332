"""Our layers over a transformers block's own weights reproduce that block's output."""

import pytest
import torch

import moe_impls

transformers = pytest.importorskip("transformers", reason="transformers not installed (pip install -e .[peers])")

SMALL = dict(hidden_size=32, intermediate_size=48, moe_intermediate_size=48, num_experts_per_tok=2)


def blocks():
    from transformers.models.mixtral.modeling_mixtral import MixtralConfig, MixtralSparseMoeBlock
    from transformers.models.olmoe.modeling_olmoe import OlmoeConfig, OlmoeSparseMoeBlock
    from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeConfig, Qwen2MoeSparseMoeBlock
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeConfig, Qwen3MoeSparseMoeBlock

    yield "mixtral", MixtralSparseMoeBlock(MixtralConfig(num_local_experts=8, **SMALL))
    yield (
        "qwen2_moe",
        Qwen2MoeSparseMoeBlock(
            Qwen2MoeConfig(num_experts=8, shared_expert_intermediate_size=64, norm_topk_prob=False, **SMALL)
        ),
    )
    yield "qwen3_moe", Qwen3MoeSparseMoeBlock(Qwen3MoeConfig(num_experts=8, norm_topk_prob=True, **SMALL))
    yield "olmoe", OlmoeSparseMoeBlock(OlmoeConfig(num_experts=8, norm_topk_prob=False, **SMALL))


@pytest.mark.parametrize("impl", moe_impls.names())
def test_matches_transformers_block(impl):
    torch.manual_seed(0)
    for name, block in blocks():
        block.eval()
        with torch.no_grad():
            for p in block.parameters():
                p.normal_(0, 0.2)
        x = torch.randn(2, 5, 32)
        ours = moe_impls.from_transformers(block, impl=impl)
        assert ours.cfg.normalize_topk == (name in ("mixtral", "qwen3_moe")) if hasattr(ours, "cfg") else True
        with torch.no_grad():
            expected = block(x)
            got, routing = ours(x)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
        shared = {id(p) for p in block.parameters()}
        assert all(id(p) in shared for p in ours.parameters()), f"{name}: weights were copied, not shared"


def test_rejects_a_block_without_experts():
    with pytest.raises(ValueError, match="expected a v5 sparse MoE block"):
        moe_impls.from_transformers(torch.nn.Linear(3, 3))
