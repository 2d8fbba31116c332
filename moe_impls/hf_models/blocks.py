"""A model type's sparse MoE block built from its config with random weights, and one forward of it.

The block around the experts (router, shared experts, gates) is the model's own and runs unchanged. transformers
is imported inside the functions, never at module import. Shapes: T tokens, D the block's hidden size.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import re
from typing import Any

import torch
from torch import nn

from moe_impls.hf_models.configs import moe_config, moe_layer_index
from moe_impls.hf_models.modeling import (
    _affinity,
    _block_classes,
    _experts_class_for,
    _is_decoder_layer,
    _modeling_module,
)


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
