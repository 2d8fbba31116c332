"""A model for `moe-bench calc`, by preset name or from a file: a TOML/JSON of `ModelConfig` fields or a
transformers `config.json`. Every mistake is one `ValueError` line that names the file."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from analysis.hf_config import from_hf_config
from analysis.models import PRESETS, ModelConfig, Published, names

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MODEL_FIELDS = {f.name for f in dataclasses.fields(ModelConfig)}
REQUIRED_FIELDS = [
    f.name
    for f in dataclasses.fields(ModelConfig)
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
]
HF_MARKERS = ("model_type", "architectures", "hidden_size")  # keys a transformers config has and ours lacks
HF_LISTS = ("mlp_only_layers",)  # transformers keys holding lists of layer indices


def load_model(spec: str) -> tuple[ModelConfig, Published | None]:
    """A preset (with its published figures) or a config file; ValueError with one line on any mistake."""
    if spec in PRESETS:
        return PRESETS[spec].config, PRESETS[spec].published
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"{spec!r} is neither a preset ({', '.join(names())}) nor an existing file")
    data = _read_object(path)
    try:
        if any(key in data for key in HF_MARKERS):
            _check_hf_lists(data)
            return from_hf_config(data, name=data.get("_name_or_path") or path.stem), None
        return _model_config(data, path), None
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    except TypeError as exc:  # a value of a type no check above foresaw, e.g. a string where a count goes
        raise ValueError(f"{path}: a value has the wrong type: {exc}") from None


def _read_object(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        kind = "TOML" if path.suffix == ".toml" else "JSON"
        raise ValueError(f"{path}: not valid {kind}: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object of ModelConfig fields, got {type(data).__name__}")
    return data


def _check_hf_lists(data: dict[str, Any]) -> None:
    for key in HF_LISTS:
        value = data.get(key)
        if value is not None and not (isinstance(value, list) and all(type(i) is int for i in value)):
            raise ValueError(f"transformers config: {key} = {value!r}: expected a list of layer indices")


def _model_config(data: dict[str, Any], path: Path) -> ModelConfig:
    unknown = sorted(set(data) - MODEL_FIELDS)
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r}; ModelConfig fields are {', '.join(sorted(MODEL_FIELDS))}")
    missing = [f for f in REQUIRED_FIELDS if f not in data]
    if missing:
        raise ValueError(f"missing field {missing[0]!r} (required: {', '.join(REQUIRED_FIELDS)})")
    return ModelConfig(**{"name": path.stem, **data})
