"""A model type's transformers modeling module, and which of its classes are the experts and the MoE block.

transformers v5 marks an experts class with the decorator `use_experts_implementation`; a modeling module is
imported only when its source mentions it. transformers is imported inside the functions, never at module import.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import os
import re

import torch
from torch import nn

DECORATOR = "use_experts_implementation"


def is_experts_class(cls: object) -> bool:
    """Whether `use_experts_implementation` processed `cls`.

    The decorator replaces `forward` with a `functools.wraps` wrapper (so `forward.__wrapped__` is the class's
    own forward) whose closure holds the `experts_interface` it dispatches through. Both together are what makes
    the class answer to `config._experts_implementation`; a class attribute such as `_apply_gate` alone would not
    say so (a class may define its own), and the attributes the wrapper sets live on instances, not the class.
    A subclass whose own forward calls the decorated one (`super().forward`) dispatches through it too.
    """
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        return False
    if _dispatches(cls.forward):
        return True
    # Ergo's experts subclass the decorated class and call its forward with each route on a row of its own
    decorated_base = any(_dispatches(getattr(b, "forward", None)) for b in cls.__mro__[1:])
    return decorated_base and _calls_super_forward(cls)


def _dispatches(forward: object) -> bool:
    return getattr(forward, "__wrapped__", None) is not None and "experts_interface" in getattr(
        getattr(forward, "__code__", None), "co_freevars", ()
    )


def _calls_super_forward(cls: type) -> bool:
    try:
        return "super().forward(" in inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return False


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


def _modeling_module(config):
    from transformers.models.auto.configuration_auto import model_type_to_module_name

    name = model_type_to_module_name(config.model_type)
    module = _moe_module(name)
    if module is None:
        raise ValueError(f"transformers.models.{name} has no experts that use {DECORATOR}")
    if isinstance(module, _Unimportable):
        raise ValueError(module.why)
    return module


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
    classes = _experts_classes(module)
    # the likeliest first; of a class and its subclass (Ergo's), the subclass: it is what a block builds
    candidates = sorted(
        classes, key=lambda c: (-_affinity(c, config), any(o is not c and issubclass(o, c) for o in classes))
    )
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


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or "(no message)"
    return f"{type(error).__name__}: {text[:160]}"
