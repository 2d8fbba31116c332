"""A `ModelConfig` from the keys of a transformers `config.json`, so any Hub MoE model can be counted offline.

Read as plain JSON: transformers is never imported. Known `model_type`s: mixtral, qwen2_moe, qwen3_moe, olmoe,
deepseek_v2, deepseek_v3, switch_transformers; any other decoder-only config is read through the same generic
keys (hidden_size, num_local_experts / num_experts / n_routed_experts, ...), with transformers' own default of
tied embeddings when `tie_word_embeddings` is absent.
"""

from __future__ import annotations

from typing import Any

from analysis.models import ModelConfig

# transformers' per-model defaults for keys a config.json may leave out.
_UNTIED = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2", "deepseek_v3")
_QK_NORM = {"qwen3_moe": "head", "olmoe": "full"}


def _get(hf: dict[str, Any], *keys: str, default: Any = ...) -> Any:
    """The first of `keys` present (and not null) in `hf`; one-line KeyError-like ValueError when none is."""
    for key in keys:
        if hf.get(key) is not None:
            return hf[key]
    if default is ...:
        raise ValueError(f"transformers config: missing key {' or '.join(repr(k) for k in keys)}")
    return default


def from_hf_config(hf: dict[str, Any], name: str | None = None) -> ModelConfig:
    """Map a transformers config dict to a ModelConfig; ValueError naming the key when one is missing or bad."""
    if not isinstance(hf, dict):
        raise ValueError(f"transformers config: expected a JSON object, got {type(hf).__name__}")
    model_type = hf.get("model_type", "")
    name = name or hf.get("_name_or_path") or model_type or "hf-config"
    if model_type == "switch_transformers":
        return _switch(hf, name)
    shape = {k: _get(hf, k) for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")}
    num_experts = _get(hf, "num_local_experts", "num_experts", "n_routed_experts", default=1)
    d_ff = _get(hf, "intermediate_size")
    first_k = _get(hf, "first_k_dense_replace", default=0)
    mlp_only = _get(hf, "mlp_only_layers", default=[])
    if mlp_only:
        if mlp_only != list(range(len(mlp_only))) or first_k:
            raise ValueError(f"transformers config: mlp_only_layers must be the leading layers 0..k-1, got {mlp_only}")
        first_k = len(mlp_only)
    if _get(hf, "moe_layer_freq", default=1) != 1:
        raise ValueError(
            f"transformers config: moe_layer_freq other than 1 is not supported, got {hf['moe_layer_freq']}"
        )
    shared_d_ff = _get(hf, "shared_expert_intermediate_size", default=0)
    num_shared = _get(hf, "n_shared_experts", default=1 if shared_d_ff else 0)
    kv_lora_rank = hf.get("kv_lora_rank")
    return ModelConfig(
        name=name,
        vocab_size=shape["vocab_size"],
        d_model=shape["hidden_size"],
        num_layers=shape["num_hidden_layers"],
        num_heads=shape["num_attention_heads"],
        num_kv_heads=None if kv_lora_rank else hf.get("num_key_value_heads"),
        head_dim=None if kv_lora_rank else hf.get("head_dim"),
        d_ff=d_ff,
        num_experts=num_experts,
        top_k=_get(hf, "num_experts_per_tok") if num_experts != 1 else 1,
        expert_d_ff=_get(hf, "moe_intermediate_size", default=d_ff),
        num_shared_experts=num_shared,
        shared_d_ff=shared_d_ff or None,
        first_k_dense=first_k,
        moe_every=_get(hf, "decoder_sparse_step", default=1),
        router="sigmoid_topk" if hf.get("topk_method") == "noaux_tc" else "softmax_topk",
        normalize_topk=_get(hf, "norm_topk_prob", default=model_type == "mixtral"),
        router_bias=hf.get("topk_method") == "noaux_tc",  # DeepSeek-V3's e_score_correction_bias [E]
        shared_expert_gate=model_type == "qwen2_moe" and bool(shared_d_ff),
        qkv_bias=_get(hf, "qkv_bias", "attention_bias", default=model_type == "qwen2_moe"),
        qk_norm=_QK_NORM.get(model_type, "none"),
        q_lora_rank=hf.get("q_lora_rank") if kv_lora_rank else None,
        kv_lora_rank=kv_lora_rank,
        qk_nope_head_dim=_get(hf, "qk_nope_head_dim", default=0),
        qk_rope_head_dim=_get(hf, "qk_rope_head_dim", default=0),
        v_head_dim=_get(hf, "v_head_dim", default=0),
        tie_embeddings=_get(hf, "tie_word_embeddings", default=model_type not in _UNTIED),
        num_mtp_layers=_get(hf, "num_nextn_predict_layers", default=0),
    )


def _sparse_step(hf: dict[str, Any], stack: str, num_layers: int) -> int:
    """Switch's step between MoE layers, from `num_sparse_<stack>_layers` (v5) or `<stack>_sparse_step` (older)."""
    sparse = hf.get(f"num_sparse_{stack}_layers")
    if sparse is not None:
        return num_layers // sparse if sparse else num_layers + 1  # no MoE layer in this stack
    return _get(hf, f"{stack}_sparse_step", default=1) or num_layers + 1


def _switch(hf: dict[str, Any], name: str) -> ModelConfig:
    """T5-style encoder-decoder; both stacks must share one sparse step, as every released Switch model does."""
    num_layers = _get(hf, "num_layers")
    num_decoder_layers = _get(hf, "num_decoder_layers", default=num_layers)
    encoder_step = _sparse_step(hf, "encoder", num_layers)
    decoder_step = _sparse_step(hf, "decoder", num_decoder_layers)
    if encoder_step != decoder_step:
        raise ValueError(
            f"transformers config: encoder and decoder sparse steps must match, got {encoder_step} and {decoder_step}"
        )
    act = _get(hf, "dense_act_fn", default="relu")
    if act not in ("relu", "gelu"):
        raise ValueError(f"transformers config: dense_act_fn must be 'relu' or 'gelu' (ungated), got {act!r}")
    return ModelConfig(
        name=name,
        vocab_size=_get(hf, "vocab_size"),
        d_model=_get(hf, "d_model"),
        num_layers=num_decoder_layers,
        num_encoder_layers=num_layers,
        num_heads=_get(hf, "num_heads"),
        head_dim=_get(hf, "d_kv"),
        d_ff=_get(hf, "d_ff"),
        num_experts=_get(hf, "num_experts"),
        top_k=_get(hf, "num_selected_experts", default=1),
        moe_every=decoder_step,
        activation=act,
        normalize_topk=False,
        tie_embeddings=_get(hf, "tie_word_embeddings", default=True),
    )
