"""Whole MoE transformers, described by the shapes that decide their parameter count, with named presets.

`ModelConfig` holds what `accounting` needs to count every weight of a real model; `PRESETS` holds published
models in the style of gpt-fast's `transformer_configs`, each beside the figures its authors published, so the
tests can check that our counting reproduces them. `moe_layer()` hands the GPU suites the very layer shape the
calculator counts, so the two never disagree.

Layer layout: layer i (0-based, in each stack) is an MoE layer iff i >= first_k_dense and (i + 1) % moe_every == 0,
which is Qwen-MoE's `decoder_sparse_step`, Switch's sparse step (layers 1, 3, 5, ...) and DeepSeek's
`first_k_dense_replace`. Every other layer has a dense FFN of width d_ff.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from moe_impls.config import ROUTERS, MoEConfig

MODEL_ACTIVATIONS = ("swiglu", "gelu", "relu")
QK_NORMS = ("none", "head", "full")
# MoEConfig knows SwiGLU and GELU; ReLU has GELU's shape (up, down), the same parameters and matmul FLOPs.
_LAYER_ACTIVATION = {"swiglu": "swiglu", "gelu": "gelu", "relu": "gelu"}


def _positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}")


def _non_negative(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"ModelConfig.{name} must be a non-negative integer, got {value!r}")


def _boolean(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"ModelConfig.{name} must be true or false, got {value!r}")


@dataclass(frozen=True)
class ModelConfig:
    """A decoder-only MoE transformer (or, with num_encoder_layers > 0, a T5-style encoder-decoder).

    Norms are RMSNorm-style (one weight vector, no bias). Attention is grouped-query attention unless
    kv_lora_rank is set, in which case it is DeepSeek's multi-head latent attention (MLA).
    """

    vocab_size: int
    d_model: int
    num_layers: int = field(metadata={"help": "decoder layers (all layers of a decoder-only model)"})
    num_heads: int
    d_ff: int = field(metadata={"help": "hidden size of the dense FFN in non-MoE layers"})
    name: str = "custom"
    num_kv_heads: int | None = field(default=None, metadata={"help": "None = num_heads (plain multi-head)"})
    head_dim: int | None = field(default=None, metadata={"help": "None = d_model // num_heads"})
    num_experts: int = field(default=8, metadata={"help": "routed experts per MoE layer; 1 = a dense FFN"})
    top_k: int = 2
    expert_d_ff: int | None = field(default=None, metadata={"help": "hidden size of one routed expert; None = d_ff"})
    num_shared_experts: int = 0
    shared_d_ff: int | None = field(default=None, metadata={"help": "hidden size of one shared expert"})
    first_k_dense: int = field(default=0, metadata={"help": "leading layers that keep a dense FFN"})
    moe_every: int = field(default=1, metadata={"help": "every moe_every-th layer is MoE"})
    activation: str = "swiglu"
    router: str = "softmax_topk"
    normalize_topk: bool = True
    router_bias: bool = field(
        default=False,
        metadata={"help": "per-expert selection bias [E] (DeepSeek-V3; in its checkpoint, a buffer in HF)"},
    )
    shared_expert_gate: bool = field(default=False, metadata={"help": "sigmoid gate [1, D] on shared experts"})
    qkv_bias: bool = False
    qk_norm: str = field(default="none", metadata={"help": "'head': per head_dim (Qwen3); 'full': per q/k width"})
    q_lora_rank: int | None = field(default=None, metadata={"help": "MLA query compression; None = direct q"})
    kv_lora_rank: int | None = field(default=None, metadata={"help": "set = MLA attention"})
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    tie_embeddings: bool = False
    num_encoder_layers: int = field(default=0, metadata={"help": "> 0: T5-style encoder; decoder gets cross-attn"})
    num_mtp_layers: int = field(default=0, metadata={"help": "DeepSeek-V3 multi-token prediction modules"})

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"ModelConfig.name must be a non-empty string, got {self.name!r}")
        for name in ("vocab_size", "d_model", "num_layers", "num_heads", "d_ff", "num_experts", "top_k", "moe_every"):
            _positive(name, getattr(self, name))
        for name in ("num_kv_heads", "head_dim", "expert_d_ff", "shared_d_ff", "q_lora_rank", "kv_lora_rank"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        for name in ("num_shared_experts", "first_k_dense", "num_encoder_layers", "num_mtp_layers"):
            _non_negative(name, getattr(self, name))
        for name in ("qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
            _non_negative(name, getattr(self, name))
        for name in ("normalize_topk", "router_bias", "shared_expert_gate", "qkv_bias", "tie_embeddings"):
            _boolean(name, getattr(self, name))
        if self.num_heads % self.kv_heads:
            raise ValueError(f"ModelConfig.num_kv_heads must divide num_heads ({self.num_heads}), got {self.kv_heads}")
        if self.top_k > self.num_experts:
            raise ValueError(f"ModelConfig.top_k must be <= num_experts ({self.num_experts}), got {self.top_k}")
        if self.first_k_dense > self.num_layers:
            raise ValueError(
                f"ModelConfig.first_k_dense must be <= num_layers ({self.num_layers}), got {self.first_k_dense}"
            )
        if self.activation not in MODEL_ACTIVATIONS:
            raise ValueError(f"ModelConfig.activation must be one of {MODEL_ACTIVATIONS}, got {self.activation!r}")
        if self.router not in ROUTERS:
            raise ValueError(f"ModelConfig.router must be one of {ROUTERS}, got {self.router!r}")
        if self.qk_norm not in QK_NORMS:
            raise ValueError(f"ModelConfig.qk_norm must be one of {QK_NORMS}, got {self.qk_norm!r}")
        if self.is_mla:
            for name in ("qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
                _positive(name, getattr(self, name))
            if self.qk_norm != "none" or self.qkv_bias:
                raise ValueError("ModelConfig.kv_lora_rank (MLA) cannot be combined with qk_norm or qkv_bias")
        elif self.q_lora_rank is not None:
            raise ValueError(f"ModelConfig.q_lora_rank needs kv_lora_rank (MLA), got q_lora_rank={self.q_lora_rank}")

    @property
    def kv_heads(self) -> int:
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

    @property
    def attn_head_dim(self) -> int:
        """Head size of grouped-query attention (not used by MLA, whose head sizes are explicit)."""
        return self.d_model // self.num_heads if self.head_dim is None else self.head_dim

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank is not None

    @property
    def routed_d_ff(self) -> int:
        return self.d_ff if self.expert_d_ff is None else self.expert_d_ff

    @property
    def shared_expert_d_ff(self) -> int:
        return self.routed_d_ff if self.shared_d_ff is None else self.shared_d_ff

    @property
    def is_moe(self) -> bool:
        """One expert and no shared expert is a dense FFN; so is a model whose layers are all dense."""
        return self.num_experts > 1 and self.num_moe_layers > 0

    def is_moe_layer(self, i: int) -> bool:
        """Whether layer i (0-based, within its stack) has an MoE FFN."""
        return i >= self.first_k_dense and (i + 1) % self.moe_every == 0

    def moe_layers_in(self, num_layers: int) -> int:
        return sum(self.is_moe_layer(i) for i in range(num_layers))

    @property
    def num_moe_layers(self) -> int:
        """MoE layers over both stacks (the encoder follows the decoder's layout rule)."""
        return self.moe_layers_in(self.num_layers) + self.moe_layers_in(self.num_encoder_layers)

    @property
    def num_dense_layers(self) -> int:
        return self.num_layers + self.num_encoder_layers - self.num_moe_layers

    def moe_layer(self) -> MoELayerShape:
        """The MoE FFN that the GPU suites benchmark, in the shape `accounting` counts."""
        routed = MoEConfig(
            d_model=self.d_model,
            d_ff=self.routed_d_ff,
            num_experts=self.num_experts,
            top_k=self.top_k,
            activation=_LAYER_ACTIVATION[self.activation],
            router=self.router,
            normalize_topk=self.normalize_topk,
        )
        return MoELayerShape(routed, self.num_shared_experts, self.shared_expert_d_ff, self.num_moe_layers)


@dataclass(frozen=True)
class MoELayerShape:
    """One MoE FFN of a model: its routed experts as an `MoEConfig`, its always-on shared experts, its count."""

    config: MoEConfig
    num_shared_experts: int
    shared_d_ff: int
    num_layers: int


@dataclass(frozen=True)
class Published:
    """Parameter counts as the authors state them; `active_counts` says what their "active" includes.

    Published figures carry two or three digits and labels both round (DeepSeek-V3: 36.6B -> "37B") and
    truncate (Qwen3: 3.35B -> "3.3B"), so a count agrees with one when within 1% or one unit of its last digit.
    """

    total: float
    active: float
    last_digit: float = field(metadata={"help": "one unit of the figures' last digit: 0.1e9 for '46.7B'"})
    source: str
    active_counts: str
    active_excludes: tuple[str, ...] = field(
        default=(), metadata={"help": "breakdown keys the authors leave out of active, e.g. ('embeddings',)"}
    )
    note: str = ""


@dataclass(frozen=True)
class Preset:
    config: ModelConfig
    published: Published


PRESETS: dict[str, Preset] = {
    # HF mistralai/Mixtral-8x7B-v0.1 config.json.
    "mixtral-8x7b": Preset(
        ModelConfig(
            name="mixtral-8x7b", vocab_size=32000, d_model=4096, num_layers=32, num_heads=32, num_kv_heads=8,
            d_ff=14336, num_experts=8, top_k=2,
        ),
        Published(
            total=46.7e9, active=12.9e9, last_digit=0.1e9,
            source="https://mistral.ai/news/mixtral-of-experts/ (46.7B total, 12.9B per token); "
            "arXiv:2401.04088 says 47B and 13B",
            active_counts="all non-expert weights including embeddings and lm_head, plus 2 of 8 experts per layer",
        ),
    ),
    # HF mistralai/Mixtral-8x22B-v0.1 config.json (the Instruct model's vocabulary is 32768).
    "mixtral-8x22b": Preset(
        ModelConfig(
            name="mixtral-8x22b", vocab_size=32000, d_model=6144, num_layers=56, num_heads=48, num_kv_heads=8,
            d_ff=16384, num_experts=8, top_k=2,
        ),
        Published(
            total=141e9, active=39e9, last_digit=1e9,
            source="https://mistral.ai/news/mixtral-8x22b/ (141B total, 39B active)",
            active_counts="all non-expert weights including embeddings and lm_head, plus 2 of 8 experts per layer",
        ),
    ),
    # HF Qwen/Qwen3-30B-A3B config.json: head_dim 128 != d_model / num_heads, per-head q/k RMSNorm.
    "qwen3-30b-a3b": Preset(
        ModelConfig(
            name="qwen3-30b-a3b", vocab_size=151936, d_model=2048, num_layers=48, num_heads=32, num_kv_heads=4,
            head_dim=128, d_ff=6144, num_experts=128, top_k=8, expert_d_ff=768, qk_norm="head",
        ),
        Published(
            total=30.5e9, active=3.3e9, last_digit=0.1e9,
            source="https://huggingface.co/Qwen/Qwen3-30B-A3B (30.5B total, 3.3B activated, 29.9B non-embedding)",
            active_counts="all non-expert weights including embeddings and lm_head, plus 8 of 128 experts per layer",
            note="we count 3.35B active, which the card truncates to 3.3B; 29.9B non-embedding = total less "
            "embedding and lm_head",
        ),
    ),
    # HF Qwen/Qwen1.5-MoE-A2.7B config.json: q/k/v biases; one shared expert of width 5632 behind a sigmoid gate.
    "qwen1.5-moe-a2.7b": Preset(
        ModelConfig(
            name="qwen1.5-moe-a2.7b", vocab_size=151936, d_model=2048, num_layers=24, num_heads=16, d_ff=5632,
            num_experts=60, top_k=4, expert_d_ff=1408, num_shared_experts=1, shared_d_ff=5632,
            shared_expert_gate=True, qkv_bias=True, normalize_topk=False,
        ),
        Published(
            total=14.3e9, active=2.7e9, last_digit=0.1e9,
            source="https://qwenlm.github.io/blog/qwen-moe/ (14.3B total, 2.7B activated, 2.0B activated non-embedding)",
            active_counts="all non-expert weights including embeddings and lm_head, shared expert, 4 of 60 experts",
        ),
    ),
    # HF allenai/OLMoE-1B-7B-0924 config.json: q/k RMSNorm over the full q and k widths.
    "olmoe-1b-7b": Preset(
        ModelConfig(
            name="olmoe-1b-7b", vocab_size=50304, d_model=2048, num_layers=16, num_heads=16, d_ff=1024,
            num_experts=64, top_k=8, qk_norm="full", normalize_topk=False,
        ),
        Published(
            total=6.9e9, active=1.3e9, last_digit=0.1e9,
            source="arXiv:2409.02060, OLMoE paper, Table 1 (6.9B total, 1.3B active)",
            active_counts="all non-expert weights including embeddings and lm_head, plus 8 of 64 experts per layer",
            note="we count 1.28B active, 1.4% under the rounded 1.3B",
        ),
    ),
    # HF deepseek-ai/DeepSeek-V2-Lite config.json: MLA without query compression, 2 shared experts, layer 0 dense.
    "deepseek-v2-lite": Preset(
        ModelConfig(
            name="deepseek-v2-lite", vocab_size=102400, d_model=2048, num_layers=27, num_heads=16, d_ff=10944,
            num_experts=64, top_k=6, expert_d_ff=1408, num_shared_experts=2, first_k_dense=1,
            kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, normalize_topk=False,
        ),
        Published(
            total=15.7e9, active=2.4e9, last_digit=0.1e9,
            source="arXiv:2405.04434, DeepSeek-V2 paper, Appendix B (15.7B total, 2.4B activated per token)",
            active_counts="all weights but the input embedding (a lookup, no FLOPs), shared and 6 of 64 routed experts",
            active_excludes=("embeddings",),
            note="DeepSeek does not say what it counts; leaving out the embedding is the reading that fits V2-Lite, "
            "V2 (20.9B -> 21B) and V3 (36.6B -> 37B, where 37.6B with the embedding would not); with it, 2.66B",
        ),
    ),
    # HF deepseek-ai/DeepSeek-V3 config.json: MLA with query compression, 1 shared expert, sigmoid router with
    # a selection bias, first 3 layers dense, 1 MTP module.
    "deepseek-v3": Preset(
        ModelConfig(
            name="deepseek-v3", vocab_size=129280, d_model=7168, num_layers=61, num_heads=128, d_ff=18432,
            num_experts=256, top_k=8, expert_d_ff=2048, num_shared_experts=1, first_k_dense=3,
            router="sigmoid_topk", router_bias=True, q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128,
            qk_rope_head_dim=64, v_head_dim=128, num_mtp_layers=1,
        ),
        Published(
            total=671e9, active=37e9, last_digit=1e9,
            source="arXiv:2412.19437, DeepSeek-V3 technical report, abstract (671B total, 37B activated per token); "
            "https://huggingface.co/deepseek-ai/DeepSeek-V3 (685B checkpoint = 671B main model + 14B MTP module)",
            active_counts="all weights but the input embedding (a lookup, no FLOPs), shared and 8 of 256 routed experts",
            active_excludes=("embeddings",),
            note="671B excludes the multi-token-prediction (MTP) module; `accounting.checkpoint_params` adds it "
            "back as the Hub checkpoint stores it (685B). Active with the embedding: 37.6B",
        ),
    ),
    # HF google/switch-base-8 config.json: T5-base (12 encoder + 12 decoder layers, ReLU FFN, tied embeddings)
    # with every other FFN of each stack (layers 1, 3, ..., 11) made an 8-expert top-1 MoE layer.
    # Simplification: T5's relative position biases (32 buckets x 12 heads per stack, 768 parameters) are not
    # counted, and routing is dropless here where Switch drops tokens beyond an expert capacity of 64.
    "switch-base-8": Preset(
        ModelConfig(
            name="switch-base-8", vocab_size=32128, d_model=768, num_layers=12, num_heads=12, head_dim=64,
            d_ff=3072, num_experts=8, top_k=1, moe_every=2, activation="relu", normalize_topk=False,
            tie_embeddings=True, num_encoder_layers=12,
        ),
        Published(
            total=0.62e9, active=0.22e9, last_digit=0.01e9,
            source="https://huggingface.co/google/switch-base-8 (620M, the parameter count of the checkpoint; the "
            "Switch paper, arXiv:2101.03961, gives none for 8 experts); active: Switch-Base is FLOP-matched to "
            "T5-Base, 220M in arXiv:1910.10683",
            active_counts="all weights of both stacks including the shared (tied) embedding, plus 1 of 8 experts "
            "per MoE layer: T5-Base plus routers",
        ),
    ),
}  # fmt: skip


def names() -> list[str]:
    return sorted(PRESETS)


def from_name(name: str) -> ModelConfig:
    """The preset's ModelConfig; ValueError listing the presets when the name is unknown."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; expected one of {', '.join(names())}")
    return PRESETS[name].config
