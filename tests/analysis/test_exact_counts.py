"""Exact counts of transformers' own models, built on the meta device, against our formula (`moe-bench calc`).

Default configs of seven MoE families are full size (DeepSeek-V3 is 671B); the meta device makes them free. The
whole file skips without transformers.
"""

import json

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from analysis import calc, exact_counts  # noqa: E402
from analysis.model_files import load_model  # noqa: E402
from tests.analysis.test_calc import calc_json, main  # noqa: E402

# model_type -> (attribute read for top_k, for num_experts); each default config is a full-size model.
MODEL_TYPES = {
    "deepseek_v3": ("num_experts_per_tok", "n_routed_experts"),
    "gpt_oss": ("num_experts_per_tok", "num_local_experts"),
    "qwen3_moe": ("num_experts_per_tok", "num_local_experts"),
    "mixtral": ("num_experts_per_tok", "num_local_experts"),
    "olmoe": ("num_experts_per_tok", "num_experts"),
    "qwen3_next": ("num_experts_per_tok", "num_experts"),
    "glm4_moe": ("num_experts_per_tok", "n_routed_experts"),
}


@pytest.fixture(scope="module", autouse=True)
def warm_imports():
    """transformers' modeling machinery imports once (about 1.5 s); a build is timed without it."""
    import transformers.modeling_utils  # noqa: F401


@pytest.mark.parametrize("model_type", sorted(MODEL_TYPES))
def test_default_config_is_counted_exactly_and_fast(model_type):
    config = exact_counts.default_config(model_type)
    counts = exact_counts.count(config)
    assert counts.build_s < 2.0
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert counts.total == sum(p.numel() for p in model.parameters())  # every parameter in exactly one component
    assert "use_experts_implementation" in counts.experts_rule
    assert counts.breakdown["routed_experts"] > 0.9 * counts.total and counts.breakdown["other"] == 0
    assert (counts.top_k.key, counts.num_experts.key) == MODEL_TYPES[model_type]
    routed = counts.breakdown["routed_experts"]
    assert counts.active == counts.total - routed + routed * counts.top_k.value // counts.num_experts.value


def test_mixtral_by_hand():
    # transformers' default mixtral config is Mixtral-8x7B: routed 32 layers x 8 experts x 3 x 4096 x 14336;
    # active = total - routed * (1 - 2/8).
    counts = exact_counts.count(exact_counts.default_config("mixtral"))
    assert counts.breakdown["routed_experts"] == 32 * 8 * 3 * 4096 * 14336 == 45_097_156_608
    assert counts.total == 46_702_792_704  # tests/analysis/test_models.py: the mixtral-8x7b preset
    assert counts.active == 46_702_792_704 - 45_097_156_608 * 3 // 4 == 12_879_925_248


@pytest.mark.parametrize("model_type", ["mixtral", "qwen3_moe", "deepseek_v3", "olmoe", "glm4_moe", "gpt_oss"])
def test_formula_agrees_with_transformers(capsys, model_type):
    out = calc_json(capsys, model_type)
    cmp = out["comparison"]
    assert out["input"] == "transformers model_type" and out["formula_error"] is None
    assert not cmp["differs"], cmp["rows"]
    assert abs(cmp["rows"]["total"]["rel_diff"]) <= calc.DIFFERS
    assert out["formula"]["total_params"] == cmp["rows"]["total"]["formula"]
    assert out["exact"]["total_params"] == cmp["rows"]["total"]["exact"]
    if model_type in ("mixtral", "qwen3_moe"):  # the same count, to the parameter, component by component
        assert all(row["rel_diff"] == 0 for row in cmp["rows"].values())


def test_qwen3_next_disagreement_is_shown(capsys):
    # 36 of its 48 layers use Gated DeltaNet linear attention, which our formula counts as full attention.
    cmp = calc_json(capsys, "qwen3_next")["comparison"]
    assert cmp["differs"] and "attention" in cmp["differing_components"]
    assert cmp["rows"]["total"]["rel_diff"] < -calc.DIFFERS
    assert main(["calc", "qwen3_next"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("!! our formula and transformers disagree: total -0.80%, active -16.39%")
    assert "attention              905.97M         1.54B          -41.21%   <- differs (> 0.5%)" in text


def test_a_model_type_the_formula_cannot_read_shows_exact_counts_alone(capsys):
    # deepseek_v2's default config leaves num_experts_per_tok unset: no formula, and no active count either.
    out = calc_json(capsys, "deepseek_v2")
    assert out["formula"] is None and "num_experts_per_tok" in out["formula_error"]
    assert out["exact"]["total_params"] > 0 and out["exact"]["active_params"] is None
    assert main(["calc", "deepseek_v2"]) == 0
    text = capsys.readouterr().out
    assert (
        "our formula cannot express it" in text
        and "active: unknown, the config sets none of num_experts_per_tok, " in text
    )


def test_switch_experts_are_found_by_name():
    # Switch keeps its experts as a ModuleDict of MLPs, not a use_experts_implementation class; no LM-only class.
    counts = exact_counts.count(exact_counts.default_config("switch_transformers"))
    assert counts.model_class == "SwitchTransformersForConditionalGeneration"
    assert counts.experts_rule == "6 modules named 'experts'" and counts.breakdown["routed_experts"] == 150_994_944
    assert counts.top_k is None and counts.active is None  # top-1 by design, but the config does not say so


def test_config_json_is_built_by_transformers_too(tmp_path, capsys):
    hf = {
        "model_type": "qwen3_moe", "vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8, "intermediate_size": 32,
        "moe_intermediate_size": 8, "num_experts": 4, "num_experts_per_tok": 2, "tie_word_embeddings": False,
    }  # fmt: skip
    path = tmp_path / "config.json"
    path.write_text(json.dumps(hf))
    out = calc_json(capsys, str(path))
    assert out["input"] == "transformers config.json" and not out["comparison"]["differs"]
    # by hand: embed 64*16 twice; attention 2 x (q 16*16 + k 16*8 + v 16*8 + o 16*16 = 768); experts 2 x 4 x 3*16*8;
    # router 2 x 4*16; norms 2 x (2*16 + q/k norms 2*8) + final 16
    assert out["exact"]["breakdown"] == {
        "embeddings": 1024, "attention": 1536, "dense_ffn": 0, "routed_experts": 3072, "shared_experts": 0,
        "routers": 128, "norms": 112, "lm_head": 1024, "other": 0,
    }  # fmt: skip
    assert out["exact"]["active_params"] == 6896 - 3072 // 2


def test_too_many_experts_are_not_built(tmp_path, capsys):
    hf = {"model_type": "qwen3_moe", "vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 2,
          "num_attention_heads": 2, "intermediate_size": 32, "num_experts": 10**12, "num_experts_per_tok": 2}  # fmt: skip
    path = tmp_path / "config.json"
    path.write_text(json.dumps(hf))
    out = calc_json(capsys, str(path))
    assert out["exact"] is None and out["exact_error"].startswith("not built: num_local_experts = 1000000000000")
    assert out["formula"]["total_params"] > 10**12


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("qwen9_moe", "moe-bench calc: 'qwen9_moe' is neither a preset ("),
        ("{path}", "moe-bench calc: {path}: ModelConfig.num_heads must be a positive integer, got 0; and no exact "
         "count: transformers cannot build a mixtral model on the meta device: ZeroDivisionError"),
    ],
)  # fmt: skip
def test_a_config_that_cannot_build_is_one_line(tmp_path, capsys, spec, message):
    path = tmp_path / "config.json"
    hf = {"model_type": "mixtral", "vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 2, "intermediate_size": 32,
          "num_attention_heads": 0, "num_key_value_heads": 0, "num_local_experts": 4, "num_experts_per_tok": 2}  # fmt: skip
    path.write_text(json.dumps(hf))
    assert main(["calc", spec.format(path=path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message.format(path=path)) and err.count("\n") == 1


class Tiny(torch.nn.Module):
    """Each rule of `exact_counts.classify` once, with counts by hand (D = 4, vocab 10)."""

    def __init__(self):
        super().__init__()
        from transformers.integrations.moe import use_experts_implementation

        @use_experts_implementation
        class Fused(torch.nn.Module):  # a decorated class is found whatever its attribute is called
            def __init__(self, config):
                super().__init__()
                self.w = torch.nn.Parameter(torch.empty(2, 4, 4))

        class RMSNorm(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.weight = torch.nn.Parameter(torch.empty(4))

        layer = torch.nn.Module()
        layer.self_attn = torch.nn.Linear(4, 4, bias=False)  # 16
        layer.self_attn.q_norm = RMSNorm()  # 4, a norm although under attention
        layer.mlp = torch.nn.Module()
        layer.mlp.gate = torch.nn.Linear(4, 2, bias=False)  # 8
        layer.mlp.moe = Fused(None)  # 32
        layer.mlp.experts = torch.nn.ModuleList(torch.nn.Linear(4, 4, bias=False) for _ in range(2))  # 32
        layer.mlp.shared_experts = torch.nn.Linear(4, 4, bias=False)  # 16
        layer.mlp.shared_expert_gate = torch.nn.Linear(4, 1, bias=False)  # 4, a router
        layer.dense = torch.nn.Linear(4, 3, bias=False)  # 12
        layer.scale = torch.nn.Parameter(torch.empty(5))  # 5, other
        self.embed = torch.nn.Embedding(10, 4)  # 40
        self.layers = torch.nn.ModuleList([layer])
        self.lm_head = torch.nn.Linear(4, 10, bias=False)
        self.lm_head.weight = self.embed.weight  # tied: counted once, as embeddings

    def get_input_embeddings(self):
        return self.embed

    def get_output_embeddings(self):
        return self.lm_head


def test_classify_rules_by_hand():
    with torch.device("meta"):
        model = Tiny()
    counts, rule = exact_counts.classify(model)
    assert rule == "1 module processed by use_experts_implementation + 1 module named 'experts'"
    assert counts == {
        "embeddings": 40, "attention": 16, "dense_ffn": 12, "routed_experts": 64, "shared_experts": 16,
        "routers": 12, "norms": 4, "lm_head": 0, "other": 5,
    }  # fmt: skip
    assert sum(counts.values()) == sum(p.numel() for p in model.parameters())


def test_model_type_input_reads_the_default_config():
    model = load_model("glm4_moe")
    assert (model.source, model.config.num_experts, model.config.first_k_dense) == ("transformers model_type", 128, 1)
