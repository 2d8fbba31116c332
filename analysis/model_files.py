"""A model for `moe-bench calc`, by preset name, from a file (a TOML/JSON of `ModelConfig` fields or a
transformers `config.json`), or by transformers `model_type` (its default config). A transformers config is read
two ways: by our formula (`hf_config.from_hf_config`) and as the transformers config that `exact_counts` builds.
Every mistake is one `ValueError` line that names the file."""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analysis import exact_counts
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
PRESET_NO_EXACT = "a preset has no transformers config to build; its published figures are checked instead"


@dataclass(frozen=True)
class LoadedModel:
    """What `moe-bench calc` was given, read two ways. `config` is our formula's view (None when the formula cannot
    express the model, `formula_error` says why); `hf_config` is the transformers config that exact counts build
    (None for presets, our own files, or without transformers, `hf_error` says why)."""

    name: str
    source: str  # "preset", "ModelConfig file", "transformers config.json" or "transformers model_type"
    where: str  # the spec as given, to name it in an error
    config: ModelConfig | None
    published: Published | None = None
    formula_error: str | None = None
    formula_from: str = "config"  # "text_config" when only a composite config's text part could be read
    hf_config: Any = None
    hf_error: str | None = None


def load_model(spec: str) -> LoadedModel:
    """A preset (with its published figures), a config file, or a transformers model_type; ValueError with one
    line when `spec` is none of them or a file is malformed."""
    if spec in PRESETS:
        preset = PRESETS[spec]
        return LoadedModel(spec, "preset", spec, preset.config, preset.published, hf_error=PRESET_NO_EXACT)
    path = Path(spec)
    if path.is_file():
        return _load_file(path)
    if exact_counts.is_model_type(spec):
        hf = exact_counts.default_config(spec)
        config, error, read_from = _formula(hf.to_dict(), spec)
        return LoadedModel(
            spec, "transformers model_type", spec, config, formula_error=error, formula_from=read_from, hf_config=hf
        )
    types = (
        "a transformers model_type" if exact_counts.transformers_available() else "a model_type (needs transformers)"
    )
    raise ValueError(f"{spec!r} is neither a preset ({', '.join(names())}), an existing file, nor {types}")


def _load_file(path: Path) -> LoadedModel:
    data = _read_object(path)
    if not any(key in data for key in HF_MARKERS):
        try:
            return LoadedModel(path.stem, "ModelConfig file", str(path), _model_config(data, path))
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
        except TypeError as exc:  # a value of a type no check above foresaw, e.g. a string where a count goes
            raise ValueError(f"{path}: a value has the wrong type: {exc}") from None
    try:
        _check_hf_lists(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    name = data.get("_name_or_path") or path.stem
    config, error, read_from = _formula(data, name)
    hf, hf_error = None, "transformers is not installed"
    if exact_counts.transformers_available():
        try:
            hf = exact_counts.config_from_dict(data)
            hf_error = None
        except ValueError as exc:
            hf_error = str(exc)
    return LoadedModel(
        name, "transformers config.json", str(path), config,
        formula_error=error, formula_from=read_from, hf_config=hf, hf_error=hf_error,
    )  # fmt: skip


def _formula(data: dict[str, Any], name: str) -> tuple[ModelConfig | None, str | None, str]:
    """Our formula's ModelConfig of a transformers config dict, or why there is none; a composite (multimodal)
    config the formula cannot read at the top is read from its `text_config`."""
    config, error = _formula_or_error(data, name)
    text = data.get("text_config")
    if config is None and isinstance(text, dict):
        config, _ = _formula_or_error({"model_type": data.get("model_type"), **text}, name)
        if config is not None:
            return config, None, "text_config"
    return config, error, "config"


def _formula_or_error(data: dict[str, Any], name: str) -> tuple[ModelConfig | None, str | None]:
    try:
        return from_hf_config(data, name=name), None
    except ValueError as exc:
        return None, " ".join(str(exc).split())
    except TypeError as exc:  # a value of a type no check foresaw, e.g. a per-layer list where a count goes
        return None, f"a value has the wrong type: {exc}"


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
