"""Exact parameter counts of any transformers model, built on the meta device: shapes without storage, so
DeepSeek-V3 costs no memory and no download, and nothing but transformers' own code decides what exists.

The count is `sum(p.numel())` over the model's parameters (tied weights once; buffers such as DeepSeek-V3's
`e_score_correction_bias` are not parameters, so they are not in it). Each parameter falls into one of
`accounting.BREAKDOWN_KEYS` or `other`, by the first rule that fits (the module path is the parameter's owner):

- embeddings / lm_head: the model's `get_input_embeddings()` / `get_output_embeddings()` weights.
- routed_experts: inside a module whose class went through transformers' `use_experts_implementation`. That
  decorator is transformers' own statement "these are the routed experts, as [E, ...] tensors", whatever the
  model calls them. Models whose experts are still a list of MLPs (Switch, NLLB-MoE, older code) have no such
  class, so a module named exactly `experts` counts too; `shared_experts` does not match that name.
- routers: a module named `gate` or `router` (or `*router*`, or a `shared_expert_gate`), in a model with experts.
- norms: a module whose class name has `Norm` in it (so Qwen3's q/k norms and MLA's latent norms are norms,
  as `accounting` counts them).
- shared_experts: a module path with `shared_expert` in it.
- attention: a module path with `attn` or `attention` in it (linear attention included).
- dense_ffn: a module path with `mlp`, `ffn`, `feed_forward` or `dense` in it.
- other: everything else, shown rather than dropped.

Active parameters per token = total - routed * (1 - top_k / num_experts), with top_k and num_experts read from
the config under whichever name the model uses (`TOP_K_KEYS`, `NUM_EXPERTS_KEYS`; the name is reported).
"""

from __future__ import annotations

import contextlib
import importlib.util
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from analysis.accounting import BREAKDOWN_KEYS, DTYPE_BYTES

EXACT_KEYS = (*BREAKDOWN_KEYS, "other")
# Names under which transformers configs give top-k and the routed expert count, most common first.
TOP_K_KEYS = ("num_experts_per_tok", "num_experts_per_token", "moe_topk", "moe_top_k", "moe_k", "top_k_experts")
NUM_EXPERTS_KEYS = ("num_local_experts", "n_routed_experts", "num_experts", "moe_num_experts")
# Refuse to build more experts than this: a model that keeps one module per expert builds E of them, and
# E = 10**12 would never finish. transformers' default configs top out at 512 (qwen3_next); doge names 16384.
MAX_BUILD_EXPERTS = 2**16
ROUTER_NAMES = ("gate", "router", "shared_expert_gate")
DENSE_FFN_PARTS = ("mlp", "ffn", "feed_forward", "dense")


def transformers_available() -> bool:
    return importlib.util.find_spec("transformers") is not None


@dataclass(frozen=True)
class ConfigValue:
    """An integer read from a config, with the attribute it came from (`ffn_config.moe_top_k` when nested)."""

    value: int
    key: str


@dataclass(frozen=True)
class ExactCounts:
    """What transformers builds from one config: parameters by component, and what the active count rests on."""

    model_class: str
    built_from: str  # "config", or "text_config" for a composite (multimodal) config
    experts_rule: str  # which rule found the routed experts; "no experts" for a dense model
    breakdown: dict[str, int]  # EXACT_KEYS -> parameters
    top_k: ConfigValue | None
    num_experts: ConfigValue | None
    build_s: float

    @property
    def total(self) -> int:
        return sum(self.breakdown.values())

    @property
    def active(self) -> int | None:
        """total - routed * (1 - top_k / E), or None when the config names no top_k or E and there are experts."""
        routed = self.breakdown["routed_experts"]
        if not routed:
            return self.total
        if self.top_k is None or self.num_experts is None:
            return None
        return self.total - routed + round(routed * self.top_k.value / self.num_experts.value)

    def as_dict(self, dtype: str) -> dict[str, Any]:
        active = self.active
        return {
            "model_class": self.model_class,
            "built_from": self.built_from,
            "experts_rule": self.experts_rule,
            "breakdown": dict(self.breakdown),
            "total_params": self.total,
            "active_params": active,
            "top_k": None if self.top_k is None else asdict(self.top_k),
            "num_experts": None if self.num_experts is None else asdict(self.num_experts),
            "weight_bytes": self.total * DTYPE_BYTES[dtype],
            "active_weight_bytes": None if active is None else active * DTYPE_BYTES[dtype],
            "build_s": self.build_s,
        }


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def is_model_type(name: str) -> bool:
    """Whether `name` is a `model_type` this transformers knows (False without transformers)."""
    if not transformers_available():
        return False
    from transformers import CONFIG_MAPPING

    return name in CONFIG_MAPPING


def default_config(model_type: str) -> Any:
    """transformers' default config for `model_type` (`AutoConfig.for_model`); ValueError in one line."""
    from transformers import AutoConfig

    try:
        with _quiet():
            return AutoConfig.for_model(model_type)
    except Exception as exc:  # a config class may raise anything on its own defaults
        raise ValueError(f"transformers cannot make the default {model_type} config: {_one_line(exc)}") from None


def config_from_dict(data: dict[str, Any]) -> Any:
    """The transformers config a `config.json` describes, missing keys at that model_type's defaults."""
    from transformers import CONFIG_MAPPING, AutoConfig

    model_type = data.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        raise ValueError(f"transformers knows no model_type {model_type!r}")
    try:
        with _quiet():
            return AutoConfig.for_model(**data)
    except Exception as exc:
        raise ValueError(f"transformers rejects this {model_type} config: {_one_line(exc)}") from None


def config_int(config: Any, keys: tuple[str, ...]) -> ConfigValue | None:
    """The first of `keys` set to a positive integer on the config or one of its sub-configs (DBRX's
    `ffn_config`); a list of equal integers (per-layer values) counts as that integer."""
    for prefix, cfg in _configs(config):
        for key in keys:
            try:
                value = getattr(cfg, key, None)
            except Exception:  # heterogeneous per-layer configs refuse some global attributes outright
                continue
            if isinstance(value, (list, tuple)) and value and len(set(value)) == 1:
                value = value[0]
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                # report the stored name, not an alias: DeepSeek-V3 maps num_local_experts to n_routed_experts
                return ConfigValue(value, prefix + getattr(cfg, "attribute_map", {}).get(key, key))
    return None


def _configs(config: Any) -> Iterator[tuple[str, Any]]:
    from transformers import PretrainedConfig

    yield "", config
    for key, value in vars(config).items():
        if isinstance(value, PretrainedConfig):
            yield f"{key}.", value


def count(config: Any) -> ExactCounts:
    """Build the model of `config` on the meta device and count it; ValueError in one line when it cannot build."""
    num_experts = config_int(config, NUM_EXPERTS_KEYS)  # sub-configs too: a composite's text_config
    if num_experts is not None and num_experts.value > MAX_BUILD_EXPERTS:
        raise ValueError(
            f"not built: {num_experts.key} = {num_experts.value} experts, more than the {MAX_BUILD_EXPERTS} we build"
        )
    start = time.perf_counter()
    model, built_from = _build_on_meta(config)
    build_s = time.perf_counter() - start
    used = config if built_from == "config" else config.get_text_config()
    breakdown, rule = classify(model)
    return ExactCounts(
        model_class=type(model).__name__,
        built_from=built_from,
        experts_rule=rule,
        breakdown=breakdown,
        top_k=config_int(used, TOP_K_KEYS),
        num_experts=config_int(used, NUM_EXPERTS_KEYS),
        build_s=build_s,
    )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """transformers' warnings about defaults (token ids outside a toy vocabulary...) say nothing about counts."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.set_verbosity(level)


def _build_on_meta(config: Any) -> tuple[Any, str]:
    """The causal LM of `config`, else that of its text_config (a composite config), else its encoder-decoder LM
    (Switch, NLLB-MoE), else its bare AutoModel: the first class with a language-model head that transformers has.
    Only classes mapped to the config are tried, so an error is the model code's, not a missing mapping's."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    text = config.get_text_config()
    attempts = [(AutoModelForCausalLM, config, "config")]
    if text is not config:
        attempts.append((AutoModelForCausalLM, text, "text_config"))
    attempts += [(AutoModelForSeq2SeqLM, config, "config"), (AutoModel, config, "config")]
    attempts = [a for a in attempts if type(a[1]) in a[0]._model_mapping]
    if not attempts:
        raise ValueError(f"transformers has no causal-LM, seq2seq or base model class for a {config.model_type} config")
    first_error: Exception | None = None
    for auto, cfg, built_from in attempts:
        try:
            with _quiet(), torch.device("meta"):
                return auto.from_config(cfg), built_from
        except Exception as exc:  # model code may raise anything on a config it cannot take
            first_error = first_error or exc
    raise ValueError(
        f"transformers cannot build a {config.model_type} model on the meta device: {_one_line(first_error)}"
    )


def _experts_marker() -> Any:
    """The code object of the forward that `use_experts_implementation` gives a class; None before transformers 5."""
    try:
        import torch
        from transformers.integrations.moe import use_experts_implementation
    except ImportError:
        return None

    class Probe(torch.nn.Module):
        def __init__(self, config: Any) -> None:
            super().__init__()

        def forward(self) -> None:  # pragma: no cover - never run
            return None

    return use_experts_implementation(Probe).forward.__code__


def _expert_modules(model: Any) -> tuple[list[str], str]:
    """Names of the routed-expert modules and the rule that found them (see the module docstring)."""
    marker = _experts_marker()
    decorated, by_name = [], []
    for name, module in model.named_modules():
        if marker is not None and getattr(type(module).forward, "__code__", None) is marker:
            decorated.append(name)
        elif name.rsplit(".", 1)[-1].lower() == "experts":
            by_name.append(name)
    by_name = [n for n in by_name if not any(n.startswith(d + ".") for d in decorated)]
    rules = []
    if decorated:
        rules.append(f"{_modules(len(decorated))} processed by use_experts_implementation")
    if by_name:
        rules.append(f"{_modules(len(by_name))} named 'experts'")
    return decorated + by_name, " + ".join(rules) or "no experts"


def _modules(n: int) -> str:
    return f"{n} module{'' if n == 1 else 's'}"


def classify(model: Any) -> tuple[dict[str, int], str]:
    """Parameters of `model` by EXACT_KEYS (each parameter once, tied ones included), and the experts rule."""
    experts, rule = _expert_modules(model)
    embeddings = {id(p) for p in _weights(model, "get_input_embeddings")}
    lm_head = {id(p) for p in _weights(model, "get_output_embeddings")}
    counts = dict.fromkeys(EXACT_KEYS, 0)
    seen: set[int] = set()
    for name, module in model.named_modules():
        key = None
        for param in module.parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            if id(param) in embeddings:
                counts["embeddings"] += param.numel()
            elif id(param) in lm_head:
                counts["lm_head"] += param.numel()
            else:
                key = key or _component(name, type(module).__name__, experts)
                counts[key] += param.numel()
    return counts, rule


def _weights(model: Any, getter: str) -> list[Any]:
    try:
        module = getattr(model, getter)()
    except (AttributeError, NotImplementedError):  # some bare models have no such method, or refuse it
        return []
    return [] if module is None else list(module.parameters())


def _component(name: str, class_name: str, experts: list[str]) -> str:
    """The EXACT_KEYS entry of a parameter owned by module `name` (rules in the module docstring, in order)."""
    if any(name == e or name.startswith(e + ".") for e in experts):
        return "routed_experts"
    parts = name.lower().split(".")
    if experts and any(p in ROUTER_NAMES or "router" in p for p in parts):
        return "routers"
    if "norm" in class_name.lower():
        return "norms"
    if any("shared_expert" in p for p in parts):
        return "shared_experts"
    if any("attn" in p or "attention" in p for p in parts):
        return "attention"
    if any(d in p for p in parts for d in DENSE_FFN_PARTS):
        return "dense_ffn"
    return "other"
