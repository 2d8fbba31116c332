"""Whole MoE transformers, described by the shapes that decide their parameter count, with named presets.

`ModelConfig` holds what `accounting` needs to count every weight of a real model; `PRESETS` holds published
models in the style of gpt-fast's `transformer_configs`, each beside the figures its authors published, so the
tests can check that our counting reproduces them. The presets are data, so they live in `presets.toml`. `moe_layer()` hands the GPU suites the very layer shape the
calculator counts, so the two never disagree.

Layer layout: layer i (0-based, in each stack) is an MoE layer iff i >= first_k_dense and (i + 1) % moe_every == 0,
which is Qwen-MoE's `decoder_sparse_step`, Switch's sparse step (layers 1, 3, 5, ...) and DeepSeek's
`first_k_dense_replace`. Every other layer has a dense FFN of width d_ff.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from moe_impls.config import ROUTERS, MoEConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

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


PRESETS_FILE = Path(__file__).with_name("presets.toml")


def load_presets(path: Path = PRESETS_FILE) -> dict[str, Preset]:
    """Each table of the file as a Preset: `config` holds ModelConfig fields (the name is the table's), `published`
    holds Published fields; ValueError naming the preset whose fields are wrong."""
    presets = {}
    for name, entry in tomllib.loads(path.read_text()).items():
        if sorted(entry) != ["config", "published"]:
            raise ValueError(f"{path}: preset {name!r}: expected tables config and published, got {sorted(entry)}")
        published = entry["published"]
        try:
            presets[name] = Preset(
                ModelConfig(name=name, **entry["config"]),
                Published(**{**published, "active_excludes": tuple(published.get("active_excludes", ()))}),
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: preset {name!r}: {exc}") from None
    return presets


PRESETS: dict[str, Preset] = load_presets()


def names() -> list[str]:
    return sorted(PRESETS)


def from_name(name: str) -> ModelConfig:
    """The preset's ModelConfig; ValueError listing the presets when the name is unknown."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; expected one of {', '.join(names())}")
    return PRESETS[name].config
