"""Every MoE model type of the installed transformers, and its sparse MoE block built from a config with random
weights, so a user can time their own model's MoE block under every experts implementation.

transformers v5 routes the experts of its MoE models through `transformers.integrations.moe`: the decorator
`use_experts_implementation` wraps an `*Experts` class's forward so that every call looks up
`config._experts_implementation` ('eager' = the class's own forward, 'grouped_mm', 'batched_mm', kernels such as
'sonicmoe', and our `moe_bench_*`, moe_impls/hf_experts.py) in `ALL_EXPERTS_FUNCTIONS`. The block around the
experts (router, shared experts, gates) is the model's own and runs unchanged; only the experts' call differs.

    for mt in discover():                               # one MoEModelType per MoE model_type, by inspection
        ...
    config = tiny_config("deepseek_v3")                 # or default_config("path/to/config.json") for real sizes
    block = build_block(config, "cuda", torch.bfloat16, seed=0)
    set_experts_implementation(block, "grouped_mm")
    y_TD = block_forward(block, x_TD)

transformers is imported inside the functions, never at module import, so `import moe_impls` stays fast and
works without it. Shapes: T tokens, D the block's hidden size.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import importlib
import importlib.util
import inspect
import os
import re
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

TINY_HIDDEN = 64
TINY_EXPERTS = 8
TINY_TOP_K = 2  # below TINY_EXPERTS / TINY_GROUPS, so grouped routers can always fill their top-k
TINY_GROUPS = 2
TINY_FFN = 32  # a multiple of 8: torch's grouped_mm wants 16-byte strides
TINY_HEADS, TINY_HEAD_DIM = 4, 16  # as many KV heads as heads: MLA and some linear attentions require it
TINY_RANK = 16
DECORATOR = "use_experts_implementation"
OURS = "moe_bench_"


@dataclasses.dataclass(frozen=True)
class MoEModelType:
    """One MoE model_type. `config_class` is the type's own (a composite one for multimodal types; the block is
    built from its text config). `why_not` is None when the tiny block builds and runs under 'eager';
    `experts_class` is None only when the modeling module does not import or the default config fails."""

    model_type: str
    config_class: type
    experts_class: type | None
    block_class: type | None
    why_not: str | None = None


# --- discovery ----------------------------------------------------------------------------------------------


def is_experts_class(cls: object) -> bool:
    """Whether `use_experts_implementation` processed `cls`.

    The decorator replaces `forward` with a `functools.wraps` wrapper (so `forward.__wrapped__` is the class's
    own forward) whose closure holds the `experts_interface` it dispatches through. Both together are what makes
    the class answer to `config._experts_implementation`; a class attribute such as `_apply_gate` alone would not
    say so (a class may define its own), and the attributes the wrapper sets live on instances, not the class.
    """
    forward = getattr(cls, "forward", None)
    return (
        isinstance(cls, type)
        and issubclass(cls, nn.Module)
        and getattr(forward, "__wrapped__", None) is not None
        and "experts_interface" in getattr(getattr(forward, "__code__", None), "co_freevars", ())
    )


def discover() -> list[MoEModelType]:
    """Every MoE model_type of the installed transformers, sorted by name (computed once: it imports ~70 modules).

    For each model_type of `CONFIG_MAPPING_NAMES`, its modeling module is imported only when its source mentions
    the decorator, the very test transformers uses to decide a model can set an experts implementation
    (`PreTrainedModel._can_set_experts_implementation`); it spares importing ~470 dense models. In that module:
    the experts classes are those `is_experts_class` accepts; the type is MoE when its text config can build one
    of them (a vision or audio part of a multimodal model lacks the experts' attributes and is left out); the
    block is the class whose `__init__` constructs that experts class, confirmed by building it from the tiny
    config and running it once under 'eager' (fp32, CPU, 4 tokens), which also gives `why_not`.
    """
    return list(_discovered())


@functools.cache
def _discovered() -> tuple[MoEModelType, ...]:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES, model_type_to_module_name

    by_module: dict[str, list[str]] = {}
    for model_type in CONFIG_MAPPING_NAMES:
        by_module.setdefault(model_type_to_module_name(model_type), []).append(model_type)
    found = []
    for module_name, model_types in by_module.items():
        module = _moe_module(module_name)
        if module is None:
            continue
        for model_type in model_types:
            entry = _classify(model_type, module)
            if entry is not None:
                found.append(entry)
    return tuple(sorted(found, key=lambda mt: mt.model_type))


@functools.cache
def _moe_module(module_name: str):
    """The modeling module when its source uses the decorator, else None (also when there is none). The source is
    read from its path, not found through the import system, which would import each model's package."""
    import transformers.models

    leaf = module_name.rsplit(".", 1)[-1]
    path = os.path.join(os.path.dirname(transformers.models.__file__), *module_name.split("."), f"modeling_{leaf}.py")
    try:
        with open(path, encoding="utf-8") as f:
            if DECORATOR not in f.read():
                return None
    except OSError:
        return None
    name = f"transformers.models.{module_name}.modeling_{leaf}"
    try:
        return importlib.import_module(name)
    except Exception as e:  # an optional dependency (torchaudio, ...) missing: the type cannot be built
        return _Unimportable(name, f"{name} does not import: {_one_line(e)}")


@dataclasses.dataclass(frozen=True)
class _Unimportable:
    """A modeling module that uses the decorator but does not import here."""

    name: str
    why: str


def _classify(model_type: str, module) -> MoEModelType | None:
    """The MoEModelType of `model_type` in `module`, or None when it is not an MoE type."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    try:
        config_class = CONFIG_MAPPING[model_type]
    except Exception:
        return None
    if isinstance(module, _Unimportable):
        return MoEModelType(model_type, config_class, None, None, module.why)
    try:
        config = moe_config(config_class())
    except Exception as e:
        return MoEModelType(model_type, config_class, None, None, f"default config fails: {_one_line(e)}")
    experts_class = _experts_class_for(module, config)
    if experts_class is None:
        return None
    guess = next(iter(_block_classes(module, experts_class, config)), None)
    try:
        tiny = tiny_config(model_type)
    except Exception as e:
        return MoEModelType(model_type, config_class, experts_class, guess, f"tiny config fails: {_one_line(e)}")
    try:
        block_class = block_class_for(tiny)
    except ValueError as e:
        return MoEModelType(model_type, config_class, experts_class, guess, str(e))
    return MoEModelType(model_type, config_class, experts_class, block_class, _why_not_run(tiny))


@contextlib.contextmanager
def one_thread():
    """Tiny blocks on one CPU thread: their matmuls are too small to share, and on a loaded machine the extra
    threads wait on each other (`moe-bench models` took 48 s on 2 threads beside another job, 4 s on one)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _why_not_run(tiny) -> str | None:
    """None when the tiny block builds and runs once under 'eager', else the one-line reason."""
    with one_thread():
        return _why_not_run_here(tiny)


def _why_not_run_here(tiny) -> str | None:
    try:
        block = build_block(tiny, "cpu", torch.float32, seed=0)
    except Exception as e:
        return f"building the block fails: {_one_line(e)}"
    if next(experts_modules(block), None) is None:
        return f"{type(block).__name__} holds no experts module using {DECORATOR}"
    x_TD = torch.randn(4, tiny.hidden_size, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            y_TD = block_forward(block, x_TD)
    except Exception as e:
        return f"eager forward fails: {_one_line(e)}"
    if not torch.isfinite(y_TD).all():
        return "eager forward gives non-finite values"
    return None


@functools.cache
def _experts_classes(module) -> tuple[type, ...]:
    return tuple(
        obj
        for obj in vars(module).values()
        if is_experts_class(obj) and getattr(obj, "__module__", None) == module.__name__
    )


def _affinity(cls: type, other: object) -> int:
    """Length of the name prefix `cls` shares with `other`'s class: Qwen3OmniMoeTalkerTextConfig prefers
    Qwen3OmniMoeTalkerTextExperts over Qwen3OmniMoeThinkerTextExperts."""
    return len(os.path.commonprefix([cls.__name__, type(other).__name__]))


def _experts_class_for(module, config) -> type | None:
    """The module's experts class that `config` can build (on the meta device, no memory), or None when the config
    lacks what every experts class reads (AttributeError: not an MoE config). Other errors (a size left None in
    a default config) still mean the config is meant for it."""
    candidates = sorted(_experts_classes(module), key=lambda c: -_affinity(c, config))
    for cls in candidates:
        try:
            with torch.device("meta"):
                cls(config)
        except AttributeError:
            continue
        except Exception:  # a size the default config leaves None (dots1's expert count): still meant for it
            pass
        return cls
    return None


def _block_classes(module, experts_class: type, config) -> list[type]:
    """Classes of `module` whose `__init__` constructs `experts_class`, the likeliest first: blocks before decoder
    layers, then the one whose name shares most with the config's (Dots3NoteTextMoE for Dots3NoteTextConfig)."""
    found = _constructors_of(module, experts_class)
    return sorted(found, key=lambda c: (_is_decoder_layer(c), -_affinity(c, config)))


@functools.cache
def _constructors_of(module, experts_class: type) -> tuple[type, ...]:
    call = re.compile(rf"\b{re.escape(experts_class.__name__)}\(")
    found = []
    for obj in vars(module).values():
        if not (isinstance(obj, type) and issubclass(obj, nn.Module)) or obj is experts_class:
            continue
        if obj.__module__ != module.__name__ or "__init__" not in vars(obj):
            continue
        try:
            source = inspect.getsource(obj.__init__)
        except (OSError, TypeError):
            continue
        if call.search(source):
            found.append(obj)
    return tuple(found)


_LAYER_INPUTS = ("attention_mask", "position_embeddings", "position_ids", "past_key_values")


def _is_decoder_layer(cls: type) -> bool:
    """A decoder layer (attention inside), not an MoE block: it checkpoints as a layer or takes attention inputs."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    takes = inspect.signature(cls.forward).parameters
    return issubclass(cls, GradientCheckpointingLayer) or any(name in takes for name in _LAYER_INPUTS)


# --- configs ------------------------------------------------------------------------------------------------


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


# Shrinking rules for tiny_config, by attribute name (full match), first match wins. None and 0 usually mean
# "feature off" and are kept, except where the default leaves a size unset that the block multiplies by.
_TINY_RULES: tuple[tuple[str, int, bool], ...] = (  # (pattern, tiny value, also replace None)
    (r"(moe_)?hidden_size", TINY_HIDDEN, False),  # MuseSpark's experts run in their own moe_hidden_size
    (r"router_hidden_size", TINY_FFN, False),  # Zaya's router MLP
    (r"hidden_size_per_layer_input", TINY_HEAD_DIM, False),
    (r".*intermediate_size", TINY_FFN, False),  # moe_, shared_expert_, dense_, prefix_dense_ ...
    (r"num_experts|num_local_experts|n_routed_experts|moe_num_experts", TINY_EXPERTS, True),  # dots1 leaves None
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
    """`values` for one layer: every per-layer list reduced to its entry `keep`, `per_layer_config` re-keyed."""
    out = dict(values, num_hidden_layers=1)
    for key, value in values.items():
        if isinstance(value, list) and len(value) == layers:
            out[key] = [value[keep]]
    per_layer = values.get("per_layer_config")
    if isinstance(per_layer, dict):
        kept = [v for k, v in per_layer.items() if str(k).isdigit() and int(k) == keep]
        out["per_layer_config"] = {0: kept[0]} if kept else None
    if isinstance(values.get("kv_source_layers"), list):  # Mistral Large 4: the one layer owns its KV cache
        out["kv_source_layers"] = [0]
    return out


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


# --- blocks -------------------------------------------------------------------------------------------------


def block_class_for(config) -> type:
    """The sparse MoE block class of `config`'s model type. Raises ValueError (one line) when there is none to
    run alone: the experts are built inline in a decoder layer, next to its attention."""
    config = moe_config(config)
    module = _modeling_module(config)
    experts_class = _experts_class_for(module, config)
    if experts_class is None:
        raise ValueError(f"{type(config).__name__} builds none of the experts classes of {module.__name__}")
    blocks = _block_classes(module, experts_class, config)
    if not blocks:
        raise ValueError(f"no class of {module.__name__} constructs {experts_class.__name__}")
    if _is_decoder_layer(blocks[0]):
        raise ValueError(
            f"{experts_class.__name__} is built inline in the decoder layer {blocks[0].__name__}, not in an MoE block"
        )
    return blocks[0]


def _modeling_module(config):
    from transformers.models.auto.configuration_auto import model_type_to_module_name

    name = model_type_to_module_name(config.model_type)
    module = _moe_module(name)
    if module is None:
        raise ValueError(f"transformers.models.{name} has no experts that use {DECORATOR}")
    if isinstance(module, _Unimportable):
        raise ValueError(module.why)
    return module


def build_block(config, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0):
    """One sparse MoE block of `config` (its text config for a multimodal one) at the config's own dimensions.

    Parameters are allocated on `device` in `dtype` (the modules the model keeps in fp32, such as DeepSeek's
    router, stay fp32; torch's own init is skipped), then drawn from `torch.manual_seed(seed)` in a forked random
    state, the caller's left as it was: normal(0, initializer_range) for matrices, ones for norms, zeros for
    biases, then the model's own `_init_weights` where it has one, so a router's correction bias starts at zero
    as in the model. The block owns a copy of the config, with
    `_experts_implementation` 'eager' unless set: `set_experts_implementation` on one block never changes another.
    It is returned in eval mode (routers with training-only noise, e.g. jitter, route deterministically);
    gradients flow in either mode.
    """
    from transformers.initialization import no_init_weights

    config = copy.deepcopy(moe_config(config))
    if config._experts_implementation is None:
        config._experts_implementation = "eager"
    block_class = block_class_for(config)
    args = _extra_init_args(block_class, config)
    devices = [torch.device(device)] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices), _default_dtype(dtype), torch.device(device), no_init_weights():
        block = block_class(config, *args)  # torch's own init skipped: every parameter is drawn below
    _keep_fp32(block, _modeling_module(config), dtype)
    with torch.random.fork_rng(devices=devices):  # the caller's random state is left as it was
        torch.manual_seed(seed)
        _init_weights(block, config)
    return block.eval()


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _extra_init_args(block_class: type, config) -> list[Any]:
    """What a block's `__init__` needs beyond the config, by parameter name."""
    args = []
    for name, param in list(inspect.signature(block_class.__init__).parameters.items())[2:]:
        if param.default is not inspect.Parameter.empty or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            break
        if name == "layer_idx":  # DeepSeek-V4 and Zaya choose their router by layer
            args.append(moe_layer_index(config))
        elif name == "intermediate_size":  # Ernie 4.5 VL: one size per modality, the text one first
            size = config.moe_intermediate_size
            args.append(size[0] if isinstance(size, (list, tuple)) else size)
        else:
            raise ValueError(f"{block_class.__name__}.__init__ needs {name!r}, which moe-bench cannot supply")
    return args


def _keep_fp32(block: nn.Module, module, dtype: torch.dtype) -> None:
    """Back to fp32 what the model keeps there, by transformers' rule: `_keep_in_fp32_modules_strict` in fp16 and
    bf16, `_keep_in_fp32_modules` in fp16 only, each name searched in the parameter's name as the model would
    have it (the block sits at `mlp` of a decoder layer: Beam lists `mlp.gate.weight`)."""
    from transformers import PreTrainedModel

    attrs = {torch.float16: ("_keep_in_fp32_modules", "_keep_in_fp32_modules_strict")}
    attrs[torch.bfloat16] = ("_keep_in_fp32_modules_strict",)
    names = {
        name
        for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, PreTrainedModel)
        for attr in attrs.get(dtype, ())
        for name in getattr(obj, attr, None) or ()
    }
    if not names:
        return
    pattern = re.compile("|".join(re.escape(n) for n in sorted(names)))
    for name, tensor in [*block.named_parameters(), *block.named_buffers()]:
        if pattern.search(f"mlp.{name}") and tensor.is_floating_point():
            tensor.data = tensor.data.float()


def _init_weights(block: nn.Module, config) -> None:
    std = getattr(config, "initializer_range", None) or 0.02
    with torch.no_grad():
        for module in block.modules():
            for name, param in module.named_parameters(recurse=False):
                if "bias" in name:
                    param.zero_()
                elif param.dim() == 1 and "norm" in type(module).__name__.lower():
                    param.fill_(1.0)
                else:
                    param.normal_(0.0, std)
        _apply_model_init(block, config)


def _apply_model_init(block: nn.Module, config) -> type | None:
    """Applies the module's PreTrainedModel `_init_weights` to every submodule of `block`, bound to a bare
    instance that carries only `config` (its zero-argument `super()` needs a real instance); returns the class
    whose init ran, or None when the module has none that accepts the block's modules."""
    from transformers import PreTrainedModel

    module = _modeling_module(config)
    candidates = [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, PreTrainedModel)
        and obj.__module__ == module.__name__
        and "_init_weights" in vars(obj)
    ]
    for cls in sorted(candidates, key=lambda c: -_affinity(c, block)):
        shim = cls.__new__(cls)
        object.__setattr__(shim, "config", config)
        try:
            for sub in block.modules():
                cls._init_weights(shim, sub)
        except Exception:
            continue
        return cls
    return None


_FLAT_INPUT: dict[type, bool] = {}  # block class -> it wants [T, D] rather than [1, T, D]


def block_forward(block: nn.Module, x_TD: torch.Tensor) -> torch.Tensor:
    """The block's hidden output [T, D] for input x_TD, called as [1, T, D] (as a decoder layer calls it) or as
    [T, D] where the block wants that. A tuple output (hidden, router_logits, ...) gives its first element."""
    flat = _FLAT_INPUT.get(type(block))
    if flat is None:
        try:
            y = _hidden(block(x_TD[None]))
            _FLAT_INPUT[type(block)] = False
        except (RuntimeError, ValueError) as first:
            try:
                y = _hidden(block(x_TD))
            except Exception:
                raise first from None
            _FLAT_INPUT[type(block)] = True
    else:
        y = _hidden(block(x_TD if flat else x_TD[None]))
    return y.reshape(x_TD.shape)


def _hidden(out: Any) -> torch.Tensor:
    while isinstance(out, (tuple, list)):
        out = out[0]
    return out


# --- experts implementations --------------------------------------------------------------------------------


def experts_modules(block: nn.Module) -> Iterator[nn.Module]:
    """The experts modules of `block` that dispatch through transformers' experts interface."""
    return (m for m in block.modules() if is_experts_class(type(m)))


def set_experts_implementation(block: nn.Module, name: str) -> None:
    """Subsequent forwards of `block` run its experts with `name`: set on the config each experts module reads
    (`experts.config`; shared by every block built from that very object, which build_block never does)."""
    known = implementation_names()
    if name not in known:
        raise ValueError(f"experts implementation {name!r} is not registered; known: {', '.join(known)}")
    experts = list(experts_modules(block))
    if not experts:
        raise ValueError(f"{type(block).__name__} has no experts module using {DECORATOR}")
    for module in experts:
        module.config._experts_implementation = name


def register_ours() -> tuple[str, ...]:
    """Our `moe_bench_*` experts implementations registered with transformers, where moe_impls/hf_experts.py
    exists (its `register()`); () otherwise."""
    if importlib.util.find_spec("moe_impls.hf_experts") is None:
        return ()
    return tuple(importlib.import_module("moe_impls.hf_experts").register())


def implementation_names() -> list[str]:
    """'eager' and every name registered in ALL_EXPERTS_FUNCTIONS, in registration order."""
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    return ["eager", *(k for k in ALL_EXPERTS_FUNCTIONS.valid_keys() if k != "eager")]


def needs_gpu_kernel(name: str) -> str | None:
    """Why `name` is not run on a CPU, or None. transformers' kernel integrations (sonicmoe, deepgemm) live in
    their own `transformers.integrations.*` module and load CUDA kernels from the Hub; the portable ones live in
    `transformers.integrations.moe`, ours in moe_impls."""
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    if name == "eager":
        return None
    where = getattr(ALL_EXPERTS_FUNCTIONS[name], "__module__", "") or ""
    if where.startswith("transformers.integrations.") and where != "transformers.integrations.moe":
        return f"CUDA kernels, {where}"
    return None


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or "(no message)"
    return f"{type(error).__name__}: {text[:160]}"


@dataclasses.dataclass(frozen=True)
class BlockRun:
    """One forward (and backward, given an output gradient) of a block: y [T, D], the input gradient [T, D] and
    each parameter's gradient by name (None where a parameter got none, e.g. a router bias used without grad)."""

    y_TD: torch.Tensor
    grad_x_TD: torch.Tensor | None
    grads: dict[str, torch.Tensor | None]


def run_block(block: nn.Module, x_TD: torch.Tensor, implementation: str, grad_y_TD: torch.Tensor | None = None):
    """`block` on x_TD with its experts under `implementation`; backpropagates grad_y_TD when given."""
    set_experts_implementation(block, implementation)
    block.zero_grad(set_to_none=True)
    x_TD = x_TD.detach().requires_grad_(grad_y_TD is not None)
    with torch.set_grad_enabled(grad_y_TD is not None):
        y_TD = block_forward(block, x_TD)
        if grad_y_TD is not None:
            y_TD.backward(grad_y_TD)
    grads = {name: None if p.grad is None else p.grad.detach().clone() for name, p in block.named_parameters()}
    return BlockRun(y_TD.detach(), x_TD.grad, grads if grad_y_TD is not None else {})
