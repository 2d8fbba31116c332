"""transformers' config of a model: at its own sizes (`default_config`), the part the MoE block reads
(`moe_config`), or shrunk to one tiny MoE layer (`tiny_config`) that builds and runs in milliseconds on a CPU.

transformers is imported inside the functions, never at module import.
"""

from __future__ import annotations

import contextlib
import os
import re
from typing import Any

TINY_HIDDEN = 64
TINY_EXPERTS = 8
TINY_TOP_K = 2  # below TINY_EXPERTS / TINY_GROUPS, so grouped routers can always fill their top-k
TINY_GROUPS = 2
TINY_FFN = 32  # a multiple of 8: torch's grouped_mm wants 16-byte strides
TINY_HEADS, TINY_HEAD_DIM = 4, 16  # as many KV heads as heads: MLA and some linear attentions require it
TINY_RANK = 16


def default_config(model_or_path: str | os.PathLike):
    """transformers' config for a model_type ('qwen3_moe'), a local checkpoint directory or its config.json (read
    offline), or a Hub id (offline only when it is cached)."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    name = os.fspath(model_or_path)
    if name in CONFIG_MAPPING_NAMES and not os.path.exists(name):
        return AutoConfig.for_model(name)
    try:  # a local folder or file, or a Hub id already cached: never the network, which a benchmark must not wait on
        return AutoConfig.from_pretrained(name, local_files_only=True)
    except OSError:
        raise ValueError(
            f"{name!r} is neither a transformers model_type, a config.json, a checkpoint folder nor a cached Hub id"
        ) from None


def moe_config(config):
    """The config the MoE block reads: a multimodal config's text (decoder) config, else `config` itself."""
    return config.get_text_config(decoder=True)


EXPERT_COUNT = r"num_experts|num_local_experts|n_routed_experts|moe_num_experts"  # the names configs give it


def names_expert_count(config) -> bool:
    """Whether `config` has an expert count under one of its names (or an alias of one): every MoE config does;
    a dense vision part of a multimodal MoE model (Step 3.7's) does not, though its MLP may build the experts."""
    keys = set(config.to_dict()) | set(getattr(type(config), "attribute_map", None) or {})
    return any(re.fullmatch(EXPERT_COUNT, key) for key in keys)


# Shrinking rules for tiny_config, by attribute name (full match), first match wins. None and 0 usually mean
# "feature off" and are kept, except where the default leaves a size unset that the block multiplies by.
_TINY_RULES: tuple[tuple[str, int, bool], ...] = (  # (pattern, tiny value, also replace None)
    (r"(moe_)?hidden_size", TINY_HIDDEN, False),  # MuseSpark's experts run in their own moe_hidden_size
    (r"router_hidden_size", TINY_FFN, False),  # Zaya's router MLP
    (r"hidden_size_per_layer_input", TINY_HEAD_DIM, False),
    (r".*intermediate_size|.*ffn_hidden_size|share_expert_dim", TINY_FFN, False),  # moe_, dense_ ...; LongCat, Step 3.5
    (EXPERT_COUNT, TINY_EXPERTS, True),  # dots1 leaves None
    (r"num_experts_per_tok|num_experts_per_token|moe_k|moe_topk|top_k_experts", TINY_TOP_K, True),
    (r"n_shared_experts|num_shared_experts|moe_num_shared_experts", 1, True),  # dots1's block multiplies by it
    (r"n_group|num_expert_group", TINY_GROUPS, False),
    (r"topk_group", 1, False),
    (r".*heads(_per_layer)?", TINY_HEADS, False),
    (r".*head_dim", TINY_HEAD_DIM, False),
    (r".*lora_rank", TINY_RANK, False),
)
_TINY_FLAGS = ("enable_moe_block",)  # Gemma 4's default config is its dense model; the MoE one sets this


def tiny_config(model_type: str):
    """The MoE (text) config of `model_type` (or of anything `default_config` reads) at tiny sizes: hidden 64,
    8 experts, top-2, one layer, small FFNs, heads and head dims. Per-layer lists keep the entry of the first MoE
    layer, so the one layer is a sparse one (DeepSeek-V4's first layers are hash-routed, and need token ids)."""
    config = moe_config(default_config(model_type))
    layers = getattr(config, "num_hidden_layers", None)
    values = config.to_dict()
    if isinstance(layers, int) and layers > 1:
        values = _one_layer(values, layers, moe_layer_index(config))
    hidden = values.get("hidden_size")
    values = {key: _tiny_value(key, value, hidden) for key, value in values.items()}
    if isinstance(values.get("per_layer_config"), dict):
        values["per_layer_config"] = {
            key: {k: _tiny_value(k, v, hidden) for k, v in override.items()} if isinstance(override, dict) else override
            for key, override in values["per_layer_config"].items()
        }
    _tiny_derived(values)
    for flag in _TINY_FLAGS:
        if values.get(flag) is False:
            values[flag] = True
    with _quiet_transformers():  # e.g. "Last layer must use full_attention": the one layer kept is a sliding one
        return type(config)(**values)


@contextlib.contextmanager
def _quiet_transformers():
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def _tiny_derived(values: dict[str, Any]) -> None:
    """Sizes a config validates against others, re-derived from the tiny ones (per family, where needed)."""
    if {"qk_nope_head_dim", "qk_rope_head_dim", "qk_head_dim"} <= values.keys():  # DeepSeek's MLA: the sum
        values["qk_head_dim"] = values["qk_nope_head_dim"] + values["qk_rope_head_dim"]
    if {"mamba_n_heads", "mamba_d_head", "mamba_expand"} <= values.keys():  # Granite hybrid: heads x dim = inner
        values["mamba_d_head"] = values["mamba_expand"] * values["hidden_size"] // values["mamba_n_heads"]
    if {"index_num_heads", "num_attention_heads", "num_key_value_heads"} <= values.keys():  # Kolibri's indexer
        values["index_num_heads"] = max(1, values["num_attention_heads"] // values["num_key_value_heads"])
    rope = values.get("rope_parameters")
    if isinstance(rope, dict) and isinstance(rope.get("mrope_section"), list):  # multimodal RoPE: sums to dim/2
        rotary = values.get("qk_rope_head_dim") or values.get("head_dim") or TINY_HEAD_DIM
        values["rope_parameters"] = dict(rope, mrope_section=_split(rotary // 2, rope["mrope_section"]))


def _split(total: int, like: list[int]) -> list[int]:
    """`total` split in the proportions of `like` (time, height, width), the remainder to the first part."""
    parts = [total * p // sum(like) for p in like]
    parts[0] += total - sum(parts)
    return parts


def _tiny_value(key: str, value: Any, hidden: int | None) -> Any:
    """`value` shrunk by the first rule that names `key`; an unnamed size (`*_dim`, `*_size`) equal to the hidden
    size is the hidden size under another name (Dots3's vision `adapter_in_dim`)."""
    if isinstance(value, list):
        return [_tiny_value(key, v, hidden) for v in value]
    if isinstance(value, bool) or not (value is None or isinstance(value, int)):
        return value
    for pattern, tiny, replace_none in _TINY_RULES:
        if re.fullmatch(pattern, key):
            if value is None:
                return tiny if replace_none else None
            return value if value == 0 else min(value, tiny)
    if value is not None and value == hidden and re.fullmatch(r".*_(dim|size)", key):
        return TINY_HIDDEN
    return value


def _one_layer(values: dict[str, Any], layers: int, keep: int) -> dict[str, Any]:
    """`values` for one layer: every per-layer list reduced to its entry `keep`, `per_layer_config` re-keyed.
    LongCat-Flash derives num_hidden_layers (two sublayers a layer) from num_layers, which is then the one set."""
    derived = "num_hidden_layers" not in values and "num_layers" in values
    out = dict(values, num_layers=1) if derived else dict(values, num_hidden_layers=1)
    for key, value in values.items():
        if isinstance(value, list) and len(value) == layers:
            out[key] = [value[keep]]
        elif key.endswith("_layers") and _layer_indices(value, layers):  # Kolibri's index_layers [4, 14, 19, 29]
            out[key] = [0] if keep in value else []
    per_layer = values.get("per_layer_config")
    if isinstance(per_layer, dict):
        kept = [v for k, v in per_layer.items() if str(k).isdigit() and int(k) == keep]
        out["per_layer_config"] = {0: kept[0]} if kept else None
    if isinstance(values.get("kv_source_layers"), list):  # Mistral Large 4: the one layer owns its KV cache
        out["kv_source_layers"] = [0]
    return out


def _layer_indices(value: Any, layers: int) -> bool:
    """Whether `value` lists some of the layers by index (the layers of one kind), not one entry per layer."""
    return (
        isinstance(value, list)
        and len(value) < layers
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < layers for v in value)
    )


def moe_layer_index(config) -> int:
    """The first layer whose MLP is a routed MoE, judged from a per-layer MLP-type list (`mlp_layer_types`,
    `layers_block_type`) where the config has one; 0 otherwise. Hash-routed layers are passed over: their router
    needs the token ids, which a block timed alone does not get."""
    for key in ("mlp_layer_types", "layers_block_type"):
        kinds = getattr(config, key, None)
        if isinstance(kinds, (list, tuple)):
            for i, kind in enumerate(kinds):
                if isinstance(kind, str) and re.search("moe|sparse", kind) and "hash" not in kind:
                    return i
    return 0
