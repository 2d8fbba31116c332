"""Model presets and their accounting reproduce published parameter counts; a toy is checked by hand."""

import dataclasses

import pytest

from analysis import accounting as acc
from analysis.hf_config import from_hf_config
from analysis.models import PRESETS, ModelConfig, from_name, load_presets
from moe_impls import MoEConfig

B, M = 1e9, 1e6

# Stated independently of analysis.models: name -> (total, active, one unit of the last published digit, source).
# A count agrees when within 1% or within one unit of the figure's last digit (labels round or truncate).
PUBLISHED = {
    "mixtral-8x7b": (46.7 * B, 12.9 * B, 0.1 * B, "https://mistral.ai/news/mixtral-of-experts/"),
    "mixtral-8x22b": (141 * B, 39 * B, 1 * B, "https://mistral.ai/news/mixtral-8x22b/"),
    "qwen3-30b-a3b": (30.5 * B, 3.3 * B, 0.1 * B, "https://huggingface.co/Qwen/Qwen3-30B-A3B"),
    "qwen1.5-moe-a2.7b": (14.3 * B, 2.7 * B, 0.1 * B, "https://qwenlm.github.io/blog/qwen-moe/"),
    "olmoe-1b-7b": (6.9 * B, 1.3 * B, 0.1 * B, "arXiv:2409.02060 Table 1"),
    "deepseek-v2-lite": (15.7 * B, 2.4 * B, 0.1 * B, "arXiv:2405.04434 Appendix B"),  # active without embedding
    "deepseek-v3": (671 * B, 37 * B, 1 * B, "arXiv:2412.19437 abstract"),  # active without embedding; no MTP
    "switch-base-8": (620 * M, 220 * M, 10 * M, "huggingface.co/google/switch-base-8; T5-Base in arXiv:1910.10683"),
}

# transformers 5 builds each model from its config.json on the meta device; sum(p.numel()) over its parameters.
# Ours differs by DeepSeek-V3's e_score_correction_bias (58 x 256, a buffer there, stored in the checkpoint) and
# by T5's relative attention biases (2 x 32 x 12), which we leave out.
HF_MODULE_PARAMS = {
    "mixtral-8x7b": 46_702_792_704,
    "mixtral-8x22b": 140_620_634_112,
    "qwen3-30b-a3b": 30_532_122_624,
    "qwen1.5-moe-a2.7b": 14_315_784_192,
    "olmoe-1b-7b": 6_919_161_856,
    "deepseek-v2-lite": 15_706_484_224,
    "deepseek-v3": 671_026_404_352 + 58 * 256,
    "switch-base-8": 619_339_008 - 2 * 32 * 12,
}


def agrees(ours: float, published: float, last_digit: float) -> bool:
    return abs(ours - published) <= max(0.01 * published, last_digit)


def test_every_preset_has_published_figures():
    assert set(PRESETS) == set(PUBLISHED) == set(HF_MODULE_PARAMS)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_matches_published_counts(name):
    total, active, last_digit, _source = PUBLISHED[name]
    cfg, pub = PRESETS[name].config, PRESETS[name].published
    assert (pub.total, pub.active, pub.last_digit) == (total, active, last_digit)
    assert acc.total_params(cfg) == HF_MODULE_PARAMS[name]
    assert agrees(acc.total_params(cfg), total, last_digit)
    assert agrees(acc.active_params_excluding(cfg, pub.active_excludes), active, last_digit)


def test_deepseek_v3_checkpoint_includes_mtp_module():
    # Hub card: 685B = 671B main model + 14B MTP (one MoE layer, eh_proj, norms, and its own embedding and head).
    assert agrees(acc.checkpoint_params(from_name("deepseek-v3")), 685 * B, 1 * B)
    assert acc.checkpoint_params(from_name("mixtral-8x7b")) == acc.total_params(from_name("mixtral-8x7b"))


def test_qwen_non_embedding_figures():
    # Qwen's cards also give counts without the embedding and lm_head: 29.9B total (Qwen3), 2.0B active (Qwen1.5).
    without = ("embeddings", "lm_head")
    qwen3, qwen15 = from_name("qwen3-30b-a3b"), from_name("qwen1.5-moe-a2.7b")
    assert agrees(acc.total_params(qwen3) - sum(acc.breakdown(qwen3)[k] for k in without), 29.9 * B, 0.1 * B)
    assert agrees(acc.active_params_excluding(qwen15, without), 2.0 * B, 0.1 * B)


# A 2-layer toy: layer 0 dense (first_k_dense=1), layer 1 MoE with 4 routed experts (top-2) and 1 shared expert.
TOY = ModelConfig(
    name="toy", vocab_size=10, d_model=4, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=2, d_ff=6,
    num_experts=4, top_k=2, expert_d_ff=3, num_shared_experts=1, shared_d_ff=2, first_k_dense=1,
)  # fmt: skip


def test_toy_counts_by_hand():
    # embeddings 10*4 = 40; lm_head (untied) 40
    # attention per layer: q 4*(2*2)=16, k 4*(1*2)=8, v 8, o (2*2)*4=16 -> 48; 2 layers -> 96
    # dense FFN (layer 0), SwiGLU: 3*4*6 = 72
    # layer 1: 4 routed experts of 3*4*3 = 36 -> 144 (2 active -> 72); shared 3*4*2 = 24; router 4*4 = 16
    # norms: 2 per layer * 2 layers * 4 + final 4 = 20
    # total 40+96+72+144+24+16+20+40 = 452; active 452 - 144 + 72 = 380
    assert acc.breakdown(TOY) == {
        "embeddings": 40, "attention": 96, "dense_ffn": 72, "routed_experts": 144,
        "shared_experts": 24, "routers": 16, "norms": 20, "lm_head": 40,
    }  # fmt: skip
    assert acc.total_params(TOY) == 452
    assert acc.active_params(TOY) == 380
    # matmul weights: active less embedding lookup and norms = 380 - 40 - 20 = 320; FLOPs 2 * 320
    assert acc.matmul_params_per_token(TOY) == 320
    assert acc.flops_per_token(TOY) == 640
    # MoE layer: router 16 + 2 experts 72 + shared 24 = 112 weights -> 224 FLOPs
    assert acc.moe_flops_per_token(TOY) == 224
    # attention scores at context 8: 2 layers * 2 FLOPs * 2 heads * (2 + 2) * 8
    assert acc.attention_flops_per_token(TOY, 8) == 256
    assert acc.weight_bytes(452, "bf16") == 904 and acc.weight_bytes(452, "fp8") == 452


def test_toy_equal_active_dense():
    # MoE layer -> one FFN of width 2*3 + 1*2 = 8: 3*4*8 = 96 = 72 + 24; no router: 380 - 16 = 364
    dense = acc.equal_active_dense(TOY)
    assert not dense.is_moe
    assert acc.total_params(dense) == acc.active_params(dense) == 364
    assert acc.flops_per_token(dense) == 640 - 2 * 16
    assert acc.equal_active_dense(dense) is dense


def test_mla_attention_by_hand():
    cfg = ModelConfig(
        vocab_size=10, d_model=8, num_layers=1, num_heads=2, d_ff=4, num_experts=1, top_k=1,
        q_lora_rank=4, kv_lora_rank=3, qk_nope_head_dim=2, qk_rope_head_dim=1, v_head_dim=2,
    )  # fmt: skip
    # q: 8*4 + 4*(2*3) = 56; kv_a: 8*(3+1) = 32; kv_b: 3*2*(2+2) = 24; o: 2*2*8 = 32 -> 144
    assert acc.attention_weights(cfg) == 144
    assert acc.attention_norms(cfg) == 4 + 3  # q_a_layernorm, kv_a_layernorm
    assert acc.attention_flops_per_token(cfg, 5) == 2 * 2 * (3 + 2) * 5


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_moe_layer_is_what_accounting_counts(name):
    cfg = from_name(name)
    layer = cfg.moe_layer()
    assert isinstance(layer.config, MoEConfig)
    per_expert = (layer.config.expert_in_features + layer.config.d_ff) * layer.config.d_model
    assert acc.breakdown(cfg)["routed_experts"] == layer.num_layers * layer.config.num_experts * per_expert


def test_moe_layer_shapes():
    mixtral = from_name("mixtral-8x7b").moe_layer()
    assert mixtral.config == MoEConfig(d_model=4096, d_ff=14336, num_experts=8, top_k=2)
    assert (mixtral.num_shared_experts, mixtral.num_layers) == (0, 32)
    v3 = from_name("deepseek-v3").moe_layer()
    assert (v3.config.num_experts, v3.config.top_k, v3.config.router, v3.num_shared_experts) == (
        256, 8, "sigmoid_topk", 1,
    )  # fmt: skip
    assert (v3.num_layers, v3.shared_d_ff) == (58, 2048)
    switch = from_name("switch-base-8").moe_layer()
    assert (switch.config.activation, switch.config.top_k, switch.num_layers) == ("gelu", 1, 12)  # ReLU's shape


HF_DEEPSEEK_V3 = {
    "model_type": "deepseek_v3", "vocab_size": 129280, "hidden_size": 7168, "intermediate_size": 18432,
    "moe_intermediate_size": 2048, "num_hidden_layers": 61, "num_attention_heads": 128, "num_key_value_heads": 128,
    "n_routed_experts": 256, "n_shared_experts": 1, "num_experts_per_tok": 8, "first_k_dense_replace": 3,
    "moe_layer_freq": 1, "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
    "v_head_dim": 128, "topk_method": "noaux_tc", "norm_topk_prob": True, "num_nextn_predict_layers": 1,
    "tie_word_embeddings": False,
}  # fmt: skip
HF_QWEN15 = {
    "model_type": "qwen2_moe", "vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 5632,
    "moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632, "num_hidden_layers": 24,
    "num_attention_heads": 16, "num_key_value_heads": 16, "num_experts": 60, "num_experts_per_tok": 4,
    "decoder_sparse_step": 1, "norm_topk_prob": False, "tie_word_embeddings": False,
}  # fmt: skip
HF_SWITCH = {
    "model_type": "switch_transformers", "vocab_size": 32128, "d_model": 768, "d_kv": 64, "d_ff": 3072,
    "num_layers": 12, "num_decoder_layers": 12, "num_heads": 12, "num_experts": 8, "num_selected_experts": 1,
    "num_sparse_encoder_layers": 6, "num_sparse_decoder_layers": 6, "dense_act_fn": "relu",
}  # fmt: skip


@pytest.mark.parametrize(
    ("hf", "preset"),
    [(HF_DEEPSEEK_V3, "deepseek-v3"), (HF_QWEN15, "qwen1.5-moe-a2.7b"), (HF_SWITCH, "switch-base-8")],
)
def test_hf_config_counts_like_the_preset(hf, preset):
    ours, ref = from_hf_config(hf), from_name(preset)
    for count in (acc.breakdown, acc.active_breakdown, acc.checkpoint_params, acc.flops_per_token):
        assert count(ours) == count(ref)
    assert ours.moe_layer() == ref.moe_layer()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"d_model": 0}, "ModelConfig.d_model must be a positive integer, got 0"),
        ({"num_layers": "32"}, "ModelConfig.num_layers must be a positive integer, got '32'"),
        ({"top_k": 9}, "ModelConfig.top_k must be <= num_experts (8), got 9"),
        ({"num_kv_heads": 3}, "ModelConfig.num_kv_heads must divide num_heads (32), got 3"),
        ({"activation": "tanh"}, "ModelConfig.activation must be one of"),
        ({"qk_norm": "yes"}, "ModelConfig.qk_norm must be one of"),
        ({"first_k_dense": 40}, "ModelConfig.first_k_dense must be <= num_layers (32), got 40"),
        ({"q_lora_rank": 8}, "ModelConfig.q_lora_rank needs kv_lora_rank"),
        ({"kv_lora_rank": 8}, "ModelConfig.qk_nope_head_dim must be a positive integer, got 0"),
        ({"tie_embeddings": "no"}, "ModelConfig.tie_embeddings must be true or false, got 'no'"),
    ],
)
def test_bad_config_is_a_one_line_error(change, message):
    with pytest.raises(ValueError) as info:
        dataclasses.replace(from_name("mixtral-8x7b"), **change)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hidden_size": None}, "transformers config: missing key 'hidden_size'"),
        ({"mlp_only_layers": [3]}, "transformers config: mlp_only_layers must be the leading layers"),
        ({"moe_layer_freq": 2}, "transformers config: moe_layer_freq other than 1 is not supported"),
    ],
)
def test_bad_hf_config_is_a_one_line_error(change, message):
    with pytest.raises(ValueError, match=message):
        from_hf_config({**HF_QWEN15, **change})


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ValueError, match="unknown model preset 'gpt-5'; expected one of deepseek-v2-lite"):
        from_name("gpt-5")


PRESET_TOML = """\
[toy.config]
vocab_size = 10
d_model = 4
num_layers = 2
num_heads = 2
d_ff = 6
num_experts = 4
top_k = 2

[toy.published]
total = 452.0
active = 380.0
last_digit = 1.0
source = "by hand"
active_counts = "everything but 2 of 4 experts"
active_excludes = ["embeddings"]
"""


def test_presets_file_reads_into_configs_and_published_figures(tmp_path):
    path = tmp_path / "presets.toml"
    path.write_text(PRESET_TOML)
    toy = load_presets(path)["toy"]
    assert toy.config == ModelConfig(vocab_size=10, d_model=4, num_layers=2, num_heads=2, d_ff=6, num_experts=4,
                                     top_k=2, name="toy")  # fmt: skip
    assert toy.published.active_excludes == ("embeddings",) and toy.published.last_digit == 1.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (PRESET_TOML.replace("top_k = 2", "top_k = 5"), "preset 'toy': ModelConfig.top_k must be <= num_experts"),
        (PRESET_TOML.replace("d_ff = 6", "d_ff = 6\nflavour = 1"), "preset 'toy': .*unexpected keyword.*flavour"),
        (PRESET_TOML.replace("[toy.published]", "[toy.figures]"), "preset 'toy': expected tables config and published"),
    ],
)
def test_a_wrong_preset_is_named(tmp_path, text, message):
    path = tmp_path / "presets.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_presets(path)
