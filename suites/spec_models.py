"""The [[models]] tables of a suite file (and `moe-bench run --model`): a transformers model's own MoE block.

    [[models]]
    model = "qwen3_moe"          # a transformers model_type, or a config.json path
    name = "qwen3-30b"           # optional; the model by default
    tokens = [1, 16, 128]
    dtypes = ["bfloat16"]        # optional overrides of the top level's lists, as for [[shapes]]
    modes = ["forward"]

Each point's rows are the experts implementations (`model_impls` at the top level; by default every one that
runs here: transformers' eager, grouped_mm and batched_mm, and ours), plus the dense baselines of the block's
routed experts. The block's dimensions are read from the block itself, built on the meta device.
"""

from __future__ import annotations

from pathlib import Path

from suites.spec_fields import FieldError, unique
from suites.spec_shapes import MAX_TOKENS

MODEL_KEYS = {"model", "name", "tokens", "dtypes", "modes"}


def model_fields(table: dict, where: str) -> dict:
    """The table `where` (models[i]) as Point fields: the model, its name and block dimensions, and tokens;
    its dtypes and modes overrides are left for the caller."""
    unknown = set(table) - MODEL_KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise FieldError(f"{where}.{key}", table[key], f"unknown key; expected {sorted(MODEL_KEYS)}")
    model = table.get("model")
    if not isinstance(model, str) or not model:
        raise FieldError(f"{where}.model", model, "expected a transformers model_type or a config.json path")
    tokens = table.get("tokens")
    if not isinstance(tokens, list) or not tokens or not all(type(t) is int and 0 < t <= MAX_TOKENS for t in tokens):
        raise FieldError(f"{where}.tokens", tokens, f"expected a non-empty list of positive integers <= {MAX_TOKENS}")
    unique(tokens, f"{where}.tokens")
    try:
        from suites import model_rows

        dims = model_rows.dimensions(model)
    except ImportError as exc:
        raise FieldError(f"{where}.model", model, f"needs transformers ({exc})") from None
    except (ValueError, KeyError, OSError, TypeError, AttributeError) as exc:
        raise FieldError(f"{where}.model", model, " ".join(str(exc).split())[:200]) from None
    fields = {k: v for k, v in table.items() if k in ("dtypes", "modes")}
    name = table.get("name", model if "/" not in model else Path(model).parent.name or model)
    if not isinstance(name, str) or not name:
        raise FieldError(f"{where}.name", name, "expected a non-empty string")
    return {**fields, "shape": name, "model": model, "tokens": tokens, **dims}


def model_impls(raw: dict) -> tuple[str, ...]:
    """The experts implementations of the model points: `model_impls`, or every one that runs on a CPU."""
    from suites import model_rows

    known = model_rows.implementations_known()
    values = raw.get("model_impls")
    if values is None:
        return model_rows.implementations("cpu")
    if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
        raise FieldError("model_impls", values, "expected a non-empty list of experts implementation names")
    unique(values, "model_impls")
    for v in values:
        if v not in known:
            raise FieldError("model_impls", v, f"expected one of {', '.join(known)}")
    return tuple(dict.fromkeys((model_rows.REFERENCE, *values)))  # the reference always runs: rows are checked on it
