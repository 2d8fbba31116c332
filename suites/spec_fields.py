"""The keys a suite file may hold, their bounds, and the checks of its top-level fields and [timing] table.

Each check raises `FieldError(key, value, why)`; suites/spec.py adds the file's path, so every mistake is one
line naming file, key and value. The [[shapes]] tables are checked in suites/spec_shapes.py.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import moe_impls
from suites.impl_names import why_not_runnable
from suites.schema import DENSE_BASELINES, EP_IMPL, is_finite_number
from suites.suite_model import parse_routing
from suites.timing_settings import TimingSettings

DTYPES = ("float32", "bfloat16", "float16")
MODES = ("forward", "train")
TOP_KEYS = {"name", "description", "seed", "impls", "baselines", "dtypes", "modes", "routing", "timing", "shapes"}
TOP_KEYS |= {"nproc", "models", "model_impls"}
NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")  # one path component, never '.', '..' or hidden
MAX_REPS = 100_000  # timed samples per row: 100x the default max_reps
MAX_MS = 600_000.0  # 10 minutes, the most any timing.*_ms value may ask for one row
SEED_RANGE = range(2**63)  # what torch.Generator.manual_seed accepts without wrapping


class FieldError(Exception):
    """One field that cannot run: `key = value: why` (suites/spec.py turns it into a SuiteError with the path)."""

    def __init__(self, key: str, value: object, why: str) -> None:
        super().__init__(f"{key} = {value!r}: {why}")


def first_repeat(values: list) -> object | None:
    """The first value listed twice, else None: a repeated value would run (and write) the same rows twice."""
    return next((v for i, v in enumerate(values) if v in values[:i]), None)


def unique(values: list, key: str) -> None:
    repeated = first_repeat(values)
    if repeated is not None:
        raise FieldError(key, values, f"{repeated!r} is listed twice")


def list_of(raw: dict, key: str, kind: type, default: list | None = None) -> list:
    value = raw.get(key, default)
    if value is None:
        raise FieldError(key, value, "required")
    if not isinstance(value, list) or not value or not all(isinstance(v, kind) for v in value):
        raise FieldError(key, value, f"expected a non-empty list of {kind.__name__}")
    unique(value, key)
    return value


def choices(raw: dict, key: str, allowed: list[str] | tuple[str, ...], default: list | None = None) -> tuple[str, ...]:
    values = list_of(raw, key, str, default)
    for v in values:
        if v not in allowed:
            raise FieldError(key, v, f"expected one of {', '.join(allowed)}")
    return tuple(values)


def routings(raw: dict, default: list[str]) -> list[str]:
    values = list_of(raw, "routing", str, default=default)
    for r in values:
        try:
            parse_routing(r)
        except ValueError as exc:
            raise FieldError("routing", r, str(exc)) from None
    return values


def check_top_keys(raw: dict) -> None:
    unknown = set(raw) - TOP_KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise FieldError(key, raw[key], f"unknown key; expected {sorted(TOP_KEYS)}")


def seed(raw: dict) -> int:
    value = raw.get("seed", 0)
    if type(value) is not int or value not in SEED_RANGE:
        raise FieldError("seed", value, "expected an integer in [0, 2**63)")
    return value


def description(raw: dict) -> str:
    value = raw.get("description", "")
    if not isinstance(value, str):
        raise FieldError("description", value, "expected a string")
    return value


def suite_name(raw: dict, path: Path) -> str:
    """The results directory's name: `name`, checked, or the file's stem made safe (spaces, '..' cannot escape)."""
    if "name" not in raw:
        return re.sub(r"[^A-Za-z0-9._-]", "_", path.stem).lstrip(".") or "suite"
    name = raw["name"]
    if not isinstance(name, str) or not NAME.fullmatch(name):
        why = "expected letters, digits, '.', '_' or '-', not starting with '.' (it names the results directory)"
        raise FieldError("name", name, why)
    return name


def impls(raw: dict) -> tuple[str, ...]:
    """Runnable names (suites/impl_names.py); transformers peers are dropped where it is absent."""
    absent = moe_impls.peers.absent()
    values = list_of(raw, "impls", str)
    for v in values:
        if v not in absent and why_not_runnable(v) is not None:
            allowed = ", ".join([*moe_impls.names(), EP_IMPL])
            raise FieldError("impls", v, f"expected one of {allowed}, <impl>+compile, a plug-in or module.path:factory")
    return tuple(v for v in values if v not in absent)


def baselines(raw: dict) -> tuple[str, ...]:
    """The dense baselines to run beside the MoE rows: all of them unless listed; `baselines = []` runs none."""
    if raw.get("baselines") == []:
        return ()
    return choices(raw, "baselines", DENSE_BASELINES, default=list(DENSE_BASELINES))


def timing(raw: object) -> TimingSettings:
    """The [timing] table: any TimingSettings field, of its type, within the bounds in the module docstring."""
    if not isinstance(raw, dict):
        raise FieldError("timing", raw, "expected a [timing] table")
    fields = {f.name: f for f in dataclasses.fields(TimingSettings)}
    for key, value in raw.items():
        if key not in fields:
            raise FieldError(f"timing.{key}", value, f"unknown key; expected {sorted(fields)}")
        default = fields[key].default
        if not _same_kind(value, default):
            raise FieldError(f"timing.{key}", value, f"expected {type(default).__name__}")
        if type(value) in (int, float):  # TOML numbers; bools were matched above
            _timing_bound(key, value)
    try:
        settings = TimingSettings(**raw)
    except (TypeError, ValueError) as exc:
        raise FieldError("timing", raw, str(exc)) from None
    if settings.min_reps > settings.max_reps:
        raise FieldError("timing.min_reps", settings.min_reps, f"must be <= timing.max_reps ({settings.max_reps})")
    return settings


def _same_kind(value: object, default: object) -> bool:
    """TOML's type for a TimingSettings field: a bool for a bool, an int for an int, either number for a float."""
    if isinstance(value, bool) or isinstance(default, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return type(value) is type(default)


def _timing_bound(key: str, value: float) -> None:
    """Finite, >= 0, and within what one row may ask for (MAX_MS, MAX_REPS)."""
    low = 1 if key == "max_reps" else 0
    high = MAX_MS if key.endswith("_ms") else MAX_REPS if key.endswith("_reps") else math.inf
    if not (is_finite_number(value) and low <= value <= high):
        limit = f" and <= {high:g}" if high < math.inf else ""
        raise FieldError(f"timing.{key}", value, f"expected a finite number >= {low}{limit}")
