"""The [[shapes]] tables of a suite file: keys, bounds, and the real models' layers a `preset` names.

Each check raises `FieldError(key, value, why)` (suites/spec_fields.py); suites/spec.py adds the file's path.
"""

from __future__ import annotations

from moe_impls import MoEConfig
from suites.spec_fields import FieldError, unique

SHAPE_KEYS = {"name", "preset", "d_model", "d_ff", "num_experts", "top_k", "activation", "tokens"}
SHAPE_KEYS |= {"capacity_factor", "normalize_topk", "dtypes", "modes", "routing"}  # the last three override the top
DIMENSIONS = ("d_model", "d_ff", "num_experts", "top_k")
MAX_TOKENS = 2**24  # 16M tokens per call: 128x the gpu suite's largest point, 2^24 x d_model 4096 x bf16 = 128 GiB
MAX_CAPACITY_FACTOR = 64.0  # past num_experts / top_k nothing drops; larger values only pad


def shape_fields(shape: dict, where: str) -> dict:
    """The table `where` (shapes[i]) as Point fields, a preset's filled in: `shape` (its name), the dimensions,
    activation, tokens and the options; its dtypes, modes and routing overrides are left for the caller."""
    unknown = set(shape) - SHAPE_KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise FieldError(f"{where}.{key}", shape[key], f"unknown key; expected {sorted(SHAPE_KEYS)}")
    fields = dict(shape)
    if "preset" in fields:
        fields = {**_preset_shape(fields.pop("preset"), where), **fields}
    fields.setdefault("name", where)
    fields["shape"] = fields.pop("name")
    fields.setdefault("activation", "swiglu")
    _check_dimensions(fields, where)
    _check_options(fields, where)
    try:
        MoEConfig(**{k: fields[k] for k in (*DIMENSIONS, "activation")})
    except ValueError as exc:
        raise FieldError(where, fields["shape"], str(exc)) from None
    return fields


def _check_dimensions(fields: dict, where: str) -> None:
    for key in DIMENSIONS:
        value = fields.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise FieldError(f"{where}.{key}", value, "expected a positive integer")
    tokens = fields.get("tokens")
    if not isinstance(tokens, list) or not tokens or not all(type(t) is int and 0 < t <= MAX_TOKENS for t in tokens):
        why = f"expected a non-empty list of positive integers <= {MAX_TOKENS} (MAX_TOKENS)"
        raise FieldError(f"{where}.tokens", tokens, why)
    unique(tokens, f"{where}.tokens")


def _check_options(fields: dict, where: str) -> None:
    cf = fields.get("capacity_factor")
    if cf is not None and (type(cf) not in (int, float) or not 0 < cf <= MAX_CAPACITY_FACTOR):
        why = f"expected a number in (0, {MAX_CAPACITY_FACTOR:g}] (omit it for dropless)"
        raise FieldError(f"{where}.capacity_factor", cf, why)
    if not isinstance(fields["shape"], str) or not fields["shape"]:
        raise FieldError(f"{where}.name", fields["shape"], "expected a non-empty string")
    if not isinstance(fields.get("normalize_topk", True), bool):
        raise FieldError(f"{where}.normalize_topk", fields["normalize_topk"], "expected true or false")


def _preset_shape(name: object, where: str) -> dict:
    """A real model's MoE layer shape, from the same presets `moe-bench calc` uses."""
    try:
        from analysis import models

        layer = models.from_name(str(name)).moe_layer()
    except (ImportError, KeyError, ValueError) as exc:
        raise FieldError(f"{where}.preset", name, str(exc).strip("'\"")) from None
    cfg = layer if isinstance(layer, MoEConfig) else layer.config
    return {
        "name": str(name),
        **{key: getattr(cfg, key) for key in DIMENSIONS},
        "activation": cfg.activation,
        "normalize_topk": cfg.normalize_topk,
    }
