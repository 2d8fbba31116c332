"""Parameter, FLOP and weight-memory accounting of a whole MoE model, from its `ModelConfig` alone.

Pure arithmetic on integers: no tensor is built, so DeepSeek-V3 is counted as fast as a toy.

Conventions (each one a choice that published figures make differently; `models.Published` says which a paper used):
- total: every weight stored for inference, excluding DeepSeek's multi-token-prediction module (see
  `checkpoint_params`) and T5's relative position biases. It equals the parameter count of the transformers
  model built from the same config.json (tests/analysis/test_models.py), plus DeepSeek-V3's router selection
  bias, a buffer there but a stored weight of the checkpoint.
- active per token: every non-expert weight (embedding and lm_head included, as a whole matrix), the shared
  experts, and top_k of the routed experts in each MoE layer. The router counts in full: every token computes
  the logits of all E experts (E * D weights, 2 * D * E FLOPs) before it knows which k it will use.
- forward FLOPs per token = 2 x the weights that take part in a matrix multiply for that token: active params
  minus the input embedding (a lookup), norm weights and biases (element-wise), plus the lm_head matmul when it
  is tied to the embedding. A multiply and an add per weight; element-wise work (activations, norms, softmax)
  is left out. For an encoder-decoder this is one encoder token plus one decoder token.
- attention score FLOPs (`attention_flops_per_token`) come on top and grow with context: per attention block a
  token at position L does 2 * H * (qk_head_dim + v_head_dim) * L for QK^T and AV (MLA counted without the
  matrix-absorption trick, as the reference implementation runs it).
"""

from __future__ import annotations

from dataclasses import replace

from analysis.models import ModelConfig

BREAKDOWN_KEYS = (
    "embeddings",
    "attention",
    "dense_ffn",
    "routed_experts",
    "shared_experts",
    "routers",
    "norms",
    "lm_head",
)
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}


def ffn_params(cfg: ModelConfig, d_ff: int) -> int:
    """One FFN: gate, up and down for SwiGLU; up and down for GELU/ReLU. No biases."""
    return (3 if cfg.activation == "swiglu" else 2) * cfg.d_model * d_ff


def attention_weights(cfg: ModelConfig) -> int:
    """Matrix weights of one attention block (projections only; MLA's norms are in `attention_norms`)."""
    D, H = cfg.d_model, cfg.num_heads
    if cfg.is_mla:
        qk_dim = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim
        q = D * H * qk_dim if cfg.q_lora_rank is None else D * cfg.q_lora_rank + cfg.q_lora_rank * H * qk_dim
        kv_a = D * (cfg.kv_lora_rank + cfg.qk_rope_head_dim)  # latent c_KV plus the shared rope key
        kv_b = cfg.kv_lora_rank * H * (cfg.qk_nope_head_dim + cfg.v_head_dim)
        return q + kv_a + kv_b + H * cfg.v_head_dim * D
    hd, KV = cfg.attn_head_dim, cfg.kv_heads
    return 2 * D * H * hd + 2 * D * KV * hd


def attention_biases(cfg: ModelConfig) -> int:
    return (cfg.num_heads + 2 * cfg.kv_heads) * cfg.attn_head_dim if cfg.qkv_bias else 0


def attention_norms(cfg: ModelConfig) -> int:
    """Norm weights inside one attention block: MLA's latent norms, or the q/k norms of Qwen3 and OLMoE."""
    if cfg.is_mla:
        return cfg.kv_lora_rank + (cfg.q_lora_rank or 0)
    if cfg.qk_norm == "head":
        return 2 * cfg.attn_head_dim
    if cfg.qk_norm == "full":
        return (cfg.num_heads + cfg.kv_heads) * cfg.attn_head_dim
    return 0


def num_attention_blocks(cfg: ModelConfig) -> int:
    """Self-attention in every layer of both stacks, plus cross-attention in each decoder layer of an encoder-decoder."""
    cross = cfg.num_layers if cfg.num_encoder_layers else 0
    return cfg.num_layers + cfg.num_encoder_layers + cross


def router_params(cfg: ModelConfig) -> int:
    """One MoE layer's gating weights: router [E, D], DeepSeek-V3's selection bias [E], Qwen's shared gate [1, D]."""
    if not cfg.is_moe:
        return 0
    return cfg.num_experts * cfg.d_model + cfg.router_bias * cfg.num_experts + cfg.shared_expert_gate * cfg.d_model


def layer_norms(cfg: ModelConfig) -> int:
    """Block norms (2 per layer, 3 in a decoder layer with cross-attention) and one final norm per stack."""
    per_decoder_layer = 3 if cfg.num_encoder_layers else 2
    stacks = 2 if cfg.num_encoder_layers else 1
    return cfg.d_model * (cfg.num_layers * per_decoder_layer + cfg.num_encoder_layers * 2 + stacks)


def breakdown(cfg: ModelConfig) -> dict[str, int]:
    """Total parameters by component, keys as in BREAKDOWN_KEYS."""
    moe = cfg.num_moe_layers if cfg.is_moe else 0
    dense_ffn = cfg.num_dense_layers * ffn_params(cfg, cfg.d_ff)
    if not cfg.is_moe:  # one expert, no router: the "MoE" layers are dense FFNs of the expert's width
        dense_ffn += cfg.num_moe_layers * _dense_moe_layer_params(cfg)
    blocks = num_attention_blocks(cfg)
    return {
        "embeddings": cfg.vocab_size * cfg.d_model,
        "attention": blocks * (attention_weights(cfg) + attention_biases(cfg)),
        "dense_ffn": dense_ffn,
        "routed_experts": moe * cfg.num_experts * ffn_params(cfg, cfg.routed_d_ff),
        "shared_experts": moe * cfg.num_shared_experts * ffn_params(cfg, cfg.shared_expert_d_ff),
        "routers": moe * router_params(cfg),
        "norms": blocks * attention_norms(cfg) + layer_norms(cfg),
        "lm_head": 0 if cfg.tie_embeddings else cfg.vocab_size * cfg.d_model,
    }


def _dense_moe_layer_params(cfg: ModelConfig) -> int:
    """A one-expert layer: a dense FFN of the expert's width, plus any shared experts (all always on)."""
    return ffn_params(cfg, cfg.routed_d_ff) + cfg.num_shared_experts * ffn_params(cfg, cfg.shared_expert_d_ff)


def active_breakdown(cfg: ModelConfig) -> dict[str, int]:
    """Parameters used by one token: everything but the routed experts, of which top_k per MoE layer."""
    counts = breakdown(cfg)
    if cfg.is_moe:
        counts["routed_experts"] = cfg.num_moe_layers * cfg.top_k * ffn_params(cfg, cfg.routed_d_ff)
    return counts


def total_params(cfg: ModelConfig) -> int:
    return sum(breakdown(cfg).values())


def active_params(cfg: ModelConfig) -> int:
    return sum(active_breakdown(cfg).values())


def checkpoint_params(cfg: ModelConfig) -> int:
    """Total plus DeepSeek-V3's MTP modules as its Hub checkpoint stores them.

    Each MTP module is one MoE layer, a projection [D, 2D], two input norms and a final norm, and (in the
    checkpoint, though it is shared with the main model at run time) its own copy of the embedding and lm_head.
    """
    if not cfg.num_mtp_layers:
        return total_params(cfg)
    layer = attention_weights(cfg) + attention_norms(cfg) + 2 * cfg.d_model
    layer += cfg.num_experts * ffn_params(cfg, cfg.routed_d_ff) + router_params(cfg)
    layer += cfg.num_shared_experts * ffn_params(cfg, cfg.shared_expert_d_ff)
    module = layer + 2 * cfg.d_model * cfg.d_model + 3 * cfg.d_model + 2 * cfg.vocab_size * cfg.d_model
    return total_params(cfg) + cfg.num_mtp_layers * module


def matmul_params_per_token(cfg: ModelConfig) -> int:
    """Weights in a matrix multiply for one token: active params less lookups, norms and biases (module docstring)."""
    active = active_breakdown(cfg)
    bias = num_attention_blocks(cfg) * attention_biases(cfg) + cfg.num_moe_layers * cfg.router_bias * cfg.num_experts
    lm_head = cfg.vocab_size * cfg.d_model  # runs whether or not it shares the embedding's storage
    return active_params(cfg) - active["embeddings"] - active["lm_head"] - active["norms"] - bias + lm_head


def flops_per_token(cfg: ModelConfig) -> int:
    """Forward FLOPs per token from matrix multiplies: 2 x `matmul_params_per_token`."""
    return 2 * matmul_params_per_token(cfg)


def attention_flops_per_token(cfg: ModelConfig, context: int) -> int:
    """Forward FLOPs of attention scores and weighted values for a token attending to `context` positions."""
    if context < 0:
        raise ValueError(f"context must be >= 0, got {context}")
    if cfg.is_mla:
        qk, v = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim, cfg.v_head_dim
    else:
        qk = v = cfg.attn_head_dim
    return num_attention_blocks(cfg) * 2 * cfg.num_heads * (qk + v) * context


def moe_flops_per_token(cfg: ModelConfig) -> int:
    """Forward matmul FLOPs per token inside the MoE layers: router, top_k routed and all shared experts."""
    if not cfg.is_moe:
        return 0
    router = cfg.num_experts * cfg.d_model + cfg.shared_expert_gate * cfg.d_model
    experts = cfg.top_k * ffn_params(cfg, cfg.routed_d_ff) + cfg.num_shared_experts * ffn_params(
        cfg, cfg.shared_expert_d_ff
    )
    return 2 * cfg.num_moe_layers * (router + experts)


def weight_bytes(params: int, dtype: str = "bf16") -> int:
    """Bytes to hold `params` weights in `dtype` (routers and norms kept in the same dtype, no quantisation scales)."""
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype must be one of {tuple(DTYPE_BYTES)}, got {dtype!r}")
    return params * DTYPE_BYTES[dtype]


def equal_active_dense(cfg: ModelConfig) -> ModelConfig:
    """The dense model a token of `cfg` costs like: each MoE layer becomes one FFN of width
    top_k * expert_d_ff + shared experts' width, with no router. Same attention, embeddings and dense layers, so
    its parameters are `cfg`'s active parameters less the routers, and its FLOPs are `cfg`'s less the routers'.
    """
    if not cfg.is_moe:
        return cfg
    width = cfg.top_k * cfg.routed_d_ff + cfg.num_shared_experts * cfg.shared_expert_d_ff
    return replace(
        cfg,
        name=f"{cfg.name}-dense-equal-active",
        num_experts=1,
        top_k=1,
        expert_d_ff=width,
        num_shared_experts=0,
        shared_d_ff=None,
        router_bias=False,
        shared_expert_gate=False,
        num_mtp_layers=0,
    )


def active_params_excluding(cfg: ModelConfig, keys: tuple[str, ...]) -> int:
    """Active params less some breakdown components: how papers that leave out the embedding count "active"."""
    unknown = set(keys) - set(BREAKDOWN_KEYS)
    if unknown:
        raise ValueError(f"breakdown keys must be among {BREAKDOWN_KEYS}, got {sorted(unknown)}")
    active = active_breakdown(cfg)
    return sum(active.values()) - sum(active[k] for k in keys)
