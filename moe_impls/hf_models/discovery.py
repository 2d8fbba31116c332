"""Every MoE model type of the installed transformers, found by inspection, each with its experts and block
classes and, where its tiny block does not build or run under 'eager', the reason why.

transformers is imported inside the functions, never at module import.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools

import torch

from moe_impls.hf_models.blocks import block_class_for, block_forward, build_block
from moe_impls.hf_models.configs import moe_config, names_expert_count, tiny_config
from moe_impls.hf_models.implementations import experts_modules
from moe_impls.hf_models.modeling import (
    DECORATOR,
    _block_classes,
    _experts_class_for,
    _moe_module,
    _one_line,
    _Unimportable,
)


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
    experts_class = _experts_class_for(module, config) if names_expert_count(config) else None
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
