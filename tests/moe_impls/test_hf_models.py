"""Every MoE model type of the installed transformers: found by inspection, its tiny block built from random
weights, and every experts implementation agreeing with the model's own ('eager'), forward and backward."""

import functools
import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers", reason="transformers not installed (pip install -e .[peers])")

from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS  # noqa: E402

from moe_impls import hf_models  # noqa: E402
from suites import models_command  # noqa: E402
from suites.cli import main  # noqa: E402

TYPES = {mt.model_type: mt for mt in hf_models.discover()}
try:
    OURS, OURS_ERROR = hf_models.register_ours(), None
except Exception as e:  # moe_impls/hf_experts.py is there but does not register: one failing test, not all
    OURS, OURS_ERROR = (), e
IMPLEMENTATIONS = ["grouped_mm", "batched_mm", *OURS]
TOKENS = 8
# the names transformers uses for the families the issue names (MiniMax-Text-01 is `minimax`)
FAMILIES = ["deepseek_v3", "gpt_oss", "qwen3_next", "glm4_moe", "ernie4_5_moe", "phimoe", "granitemoe", "jamba"]
FAMILIES += ["minimax", "mixtral", "qwen3_moe", "olmoe", "qwen2_moe"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with hf_models.one_thread():  # tiny matmuls: a second thread only waits, the more on a loaded machine
        yield


@functools.cache
def reference(model_type: str) -> models_command.Prepared:
    """One tiny block per type with its tokens and eager's run, shared by the type's tests."""
    return models_command.prepare(model_type, TOKENS)


def test_discovery_finds_the_moe_families_by_inspection():
    assert len(TYPES) >= 40
    assert set(FAMILIES) <= TYPES.keys()
    from transformers.models.llama.modeling_llama import LlamaMLP
    from transformers.models.mixtral.modeling_mixtral import MixtralExperts, MixtralSparseMoeBlock

    assert TYPES["mixtral"].experts_class is MixtralExperts and TYPES["mixtral"].block_class is MixtralSparseMoeBlock
    assert hf_models.is_experts_class(MixtralExperts) and not hf_models.is_experts_class(LlamaMLP)
    assert all(hf_models.is_experts_class(mt.experts_class) for mt in TYPES.values() if mt.experts_class)


def test_an_experts_subclass_that_calls_the_decorated_forward_is_one_and_a_replacing_one_is_not():
    """Ergo (transformers 5.25) normalises each route in a subclass of its decorated experts class, whose forward
    calls the decorated one: its block builds the subclass, and each implementation runs beneath it."""
    from transformers.models.mixtral.modeling_mixtral import MixtralExperts

    class Calls(MixtralExperts):
        def forward(self, hidden_states, top_k_index, top_k_weights):
            return super().forward(hidden_states, top_k_index, top_k_weights) * 2

    class Replaces(MixtralExperts):
        def forward(self, hidden_states, top_k_index, top_k_weights):
            return hidden_states

    assert hf_models.is_experts_class(Calls) and not hf_models.is_experts_class(Replaces)
    if "ergo" in TYPES:
        ergo = TYPES["ergo"]
        assert ergo.why_not is None, ergo.why_not
        assert (ergo.experts_class.__name__, ergo.block_class.__name__) == ("ErgoExperts", "ErgoMoE")


def test_dense_models_and_the_vision_parts_of_moe_models_are_left_out():
    assert not {"llama", "mistral", "qwen3", "gpt2"} & TYPES.keys()
    assert "qwen3_vl_moe_vision" not in TYPES and {"qwen3_vl_moe", "qwen3_vl_moe_text"} <= TYPES.keys()
    if "step3p7" in TYPES:  # transformers 5.25: its vision part builds the experts class, but names no experts
        assert "step3p5_vision" not in TYPES and {"step3p5", "step3p7"} <= TYPES.keys()


@pytest.mark.parametrize("model_type", sorted(TYPES))
def test_the_tiny_block_is_tiny_or_the_type_says_why_not(model_type):
    mt = TYPES[model_type]
    if mt.why_not is not None:
        assert mt.why_not.strip() and "\n" not in mt.why_not
        return
    config = hf_models.tiny_config(model_type)
    # one layer: LongCat-Flash counts its two sublayers in num_hidden_layers, and its layers in num_layers
    assert config.hidden_size == hf_models.TINY_HIDDEN and 1 in (
        config.num_hidden_layers,
        getattr(config, "num_layers", 0),
    )
    prepared = reference(model_type)
    block, x_TD, ref = prepared.block, prepared.x_TD, prepared.eager
    assert type(block) is mt.block_class
    experts = list(hf_models.experts_modules(block))
    assert [type(e) for e in experts] == [mt.experts_class]
    assert sum(p.numel() for p in block.parameters()) < 100_000
    assert ref.y_TD.shape == x_TD.shape and ref.y_TD.abs().max() > 0
    assert ref.grad_x_TD is not None and ref.grad_x_TD.abs().max() > 0
    expert_grads = [ref.grads[name] for name, _ in block.named_parameters() if name.startswith("experts.")]
    assert expert_grads and all(g is not None and g.abs().max() > 0 for g in expert_grads)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("model_type", sorted(TYPES))
def test_every_implementation_matches_eager_forward_and_backward(model_type, implementation):
    mt = TYPES[model_type]
    if mt.why_not is not None:
        assert mt.why_not.strip() and "\n" not in mt.why_not
        return
    assert models_command.judge(reference(model_type), implementation) == models_command.Verdict("ok")


def test_our_implementations_register_when_their_module_is_there():
    if OURS_ERROR is not None:
        raise OURS_ERROR
    assert all(name.startswith(hf_models.OURS) and name in hf_models.implementation_names() for name in OURS)


def test_a_wrong_implementation_is_caught(monkeypatch):
    calls = []

    def off_by_a_bit(module, hidden_states, top_k_index, top_k_weights):
        calls.append(hidden_states.shape)
        return ALL_EXPERTS_FUNCTIONS["grouped_mm"](module, hidden_states, top_k_index, top_k_weights) * 1.001

    monkeypatch.setitem(ALL_EXPERTS_FUNCTIONS._global_mapping, "off_by_a_bit", off_by_a_bit)
    prepared = reference("mixtral")
    verdict = models_command.judge(prepared, "off_by_a_bit")
    assert calls == [tuple(prepared.x_TD.shape)] and verdict.status == models_command.DIFFERS
    assert verdict.detail.startswith("output ") and "experts.gate_up_proj.grad" in verdict.detail
    assert prepared.block.experts.config._experts_implementation == "eager"


def test_set_experts_implementation_is_per_block_and_refuses_unknown_names():
    config = hf_models.tiny_config("qwen3_moe")
    one, two = (hf_models.build_block(config, seed=0) for _ in range(2))
    hf_models.set_experts_implementation(one, "batched_mm")
    assert one.experts.config._experts_implementation == "batched_mm"
    assert two.experts.config._experts_implementation == "eager" and config._experts_implementation is None
    with pytest.raises(ValueError, match="'nope' is not registered; known: eager, "):
        hf_models.set_experts_implementation(one, "nope")


def test_build_block_is_seeded_keeps_the_callers_random_state_and_honours_dtype():
    config = hf_models.tiny_config("deepseek_v3")
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = hf_models.build_block(config, seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    b, c = hf_models.build_block(config, seed=4), hf_models.build_block(config, seed=5)
    assert torch.equal(a.experts.gate_up_proj, b.experts.gate_up_proj)
    assert not torch.equal(a.experts.gate_up_proj, c.experts.gate_up_proj)
    assert torch.count_nonzero(a.gate.e_score_correction_bias) == 0  # the model's own init, not a random draw
    half = hf_models.build_block(config, dtype=torch.bfloat16)
    assert half.experts.gate_up_proj.dtype == torch.bfloat16
    assert half.gate.weight.dtype == torch.float32  # DeepSeek keeps its router in fp32 (_keep_in_fp32_modules_strict)
    assert torch.get_default_dtype() == torch.float32


def test_a_block_is_built_at_the_configs_own_size_and_from_a_local_config(tmp_path):
    config = hf_models.default_config("mixtral")
    config.update(dict(hidden_size=48, intermediate_size=40, num_local_experts=6, num_experts_per_tok=3))
    config.save_pretrained(tmp_path)
    for where in (tmp_path, tmp_path / "config.json"):
        block = hf_models.build_block(hf_models.default_config(where))
        assert block.experts.gate_up_proj.shape == (6, 80, 48)
    x_TD = torch.randn(5, 48)
    assert hf_models.block_forward(block, x_TD).shape == (5, 48)


def test_multimodal_configs_give_their_text_block():
    config = hf_models.default_config("qwen3_vl_moe")
    assert hf_models.block_class_for(config) is TYPES["qwen3_vl_moe"].block_class
    assert hf_models.moe_layer_index(hf_models.default_config("deepseek_v4")) > 0  # past its hash-routed layers


def test_models_command_prints_one_line_per_type(capsys):
    assert main(["models", "--only", "^(mixtral|gemma4)$"]) == 0
    lines = capsys.readouterr().out.splitlines()
    mixtral = next(line for line in lines if line.startswith("mixtral "))
    assert mixtral.split()[1] == "MixtralSparseMoeBlock" and mixtral.split()[2:4] == ["ok", "ok"]
    gemma4 = next(line for line in lines if line.startswith("gemma4 "))
    assert "cannot run: " in gemma4 and "decoder layer" in gemma4
    assert any(line.startswith("not run on this CPU: ") and "sonicmoe" in line for line in lines)


def test_models_command_says_why_without_transformers(monkeypatch, capsys):
    from moe_impls import peers

    monkeypatch.setattr(peers, "unavailable_reason", lambda: "transformers is not installed")
    assert main(["models"]) == 2
    assert capsys.readouterr().err.strip() == "moe-bench: models needs transformers v5: transformers is not installed"


def test_importing_moe_impls_does_not_import_transformers():
    code = "import sys, moe_impls, moe_impls.hf_models; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.gpu
@pytest.mark.parametrize("model_type", ["deepseek_v3", "gpt_oss", "qwen3_next"])
def test_a_block_on_cuda_in_bf16_matches_eager(model_type):
    config = hf_models.tiny_config(model_type)
    block = hf_models.build_block(config, "cuda", torch.bfloat16, seed=0)
    assert block.experts.gate_up_proj.is_cuda
    x_TD = torch.randn(64, config.hidden_size, device="cuda", dtype=torch.bfloat16)
    grad_y_TD = torch.randn_like(x_TD)
    ref = hf_models.run_block(block, x_TD, "eager", grad_y_TD)
    for name in IMPLEMENTATIONS:
        run = hf_models.run_block(block, x_TD, name, grad_y_TD)
        assert models_command.mismatches(run, ref, "bfloat16") == [], name
