"""Suite files: a TOML grid of shapes x dtypes x modes x routings, validated before any point runs.

    name = "smoke"
    impls = ["loop", "padded", "sort_group", "dense_all"]
    baselines = ["param_matched", "flop_matched"]
    dtypes = ["float32"]
    modes = ["forward", "train"]
    routing = ["softmax_topk", "zipf:1.2", "hot:0.5"]   # router kinds, or skews: uniform, zipf:S, hot:P, collapse
    [timing]                                           # any field of suites.timing.TimingSettings
    budget_ms = 200
    [[shapes]]
    name = "tiny"                                      # or preset = "mixtral-8x7b" for a real model's layer
    d_model = 64
    d_ff = 128
    num_experts = 8
    top_k = 2
    tokens = [16, 128]

Expert-parallel suites list `impls = ["expert_parallel"]` (optionally beside single-process implementations)
and name the world sizes to run with a top-level `nproc = [1, 2, 4]`; `moe-bench run --nproc N` overrides the
list. In such a suite `tokens` is tokens per rank (every rank routes its own batch), modes are forward only,
and every shape's num_experts must divide by every world size. `baselines = []` runs no dense baseline.

Bounds, so that a typo fails here and not hours into a run: `name` is one path component of letters, digits,
'.', '_' and '-' (it names the results directory); no list repeats a value and no point appears twice;
tokens are integers in [1, MAX_TOKENS]; zipf:S takes S in [0, 10] and hot:P takes P in (0, 1];
capacity_factor is in (0, MAX_CAPACITY_FACTOR]; timing values are finite and >= 0, the millisecond ones at most
MAX_MS, and 1 <= max_reps <= MAX_REPS with min_reps <= max_reps.

Every mistake is one `SuiteError` line naming the file, the key and the value.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import moe_impls
from moe_impls import MoEConfig, SyntheticRouting
from suites.timing import TimingSettings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIG_DIR = Path(__file__).parent / "configs"
DTYPES = ("float32", "bfloat16", "float16")
MODES = ("forward", "train")
TOP_KEYS = {"name", "description", "seed", "impls", "baselines", "dtypes", "modes", "routing", "timing", "shapes"}
TOP_KEYS |= {"nproc"}
EP_IMPL = "expert_parallel"  # runs on every rank of a process group (suites/ep_run.py), not through the Runner
SHAPE_KEYS = {"name", "preset", "d_model", "d_ff", "num_experts", "top_k", "activation", "tokens"}
SHAPE_KEYS |= {"capacity_factor", "normalize_topk", "dtypes", "modes", "routing"}  # the last three override the top
NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")  # one path component, never '.', '..' or hidden
MAX_TOKENS = 2**24  # 16M tokens per call: 128x the gpu suite's largest point, 2^24 x d_model 4096 x bf16 = 128 GiB
MAX_CAPACITY_FACTOR = 64.0  # past num_experts / top_k nothing drops; larger values only pad
MAX_REPS = 100_000  # timed samples per row: 100x the default max_reps
MAX_MS = 600_000.0  # 10 minutes, the most any timing.*_ms value may ask for one row
SEED_RANGE = range(2**63)  # what torch.Generator.manual_seed accepts without wrapping


class SuiteError(ValueError):
    """A suite file that cannot run; the message is one line naming file, key and value."""


@dataclass(frozen=True)
class Point:
    """One measured configuration; every implementation and baseline gets a row at each point."""

    shape: str
    d_model: int
    d_ff: int
    num_experts: int
    top_k: int
    activation: str
    tokens: int
    dtype: str
    mode: str
    routing: str
    capacity_factor: float | None = None
    normalize_topk: bool = True
    seed: int = 0

    def moe_config(self) -> MoEConfig:
        router, synthetic = parse_routing(self.routing, self.seed)
        return MoEConfig(
            d_model=self.d_model,
            d_ff=self.d_ff,
            num_experts=self.num_experts,
            top_k=self.top_k,
            activation=self.activation,
            router=router,
            capacity_factor=self.capacity_factor,
            normalize_topk=self.normalize_topk,
            noise_seed=self.seed,
            synthetic=synthetic,
        )

    @property
    def point_id(self) -> str:
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    def columns(self) -> dict:
        router, _ = parse_routing(self.routing, self.seed)
        cols = dataclasses.asdict(self)
        del cols["seed"]
        return {"point_id": self.point_id, **cols, "router": router}


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    path: Path
    file_hash: str
    seed: int
    impls: tuple[str, ...]
    baselines: tuple[str, ...]
    dtypes: tuple[str, ...]
    timing: TimingSettings
    points: tuple[Point, ...]
    nproc: tuple[int, ...] = ()  # world sizes of the expert-parallel rows; () when the suite has none


def parse_routing(text: str, seed: int = 0) -> tuple[str, SyntheticRouting | None]:
    """'softmax_topk' -> (router, None); 'zipf:1.2' -> ('softmax_topk', SyntheticRouting('zipf', zipf_s=1.2))."""
    if text in moe_impls.ROUTERS:
        return text, None
    kind, _, arg = text.partition(":")
    if kind in ("uniform", "collapse") and not arg:
        return "softmax_topk", SyntheticRouting(kind, seed=seed)
    if kind in ("zipf", "hot") and arg:
        value = float(arg)
        key = "zipf_s" if kind == "zipf" else "hot_fraction"
        return "softmax_topk", SyntheticRouting(kind, seed=seed, **{key: value})
    raise ValueError(f"expected a router {moe_impls.ROUTERS} or uniform, zipf:S, hot:P, collapse; got {text!r}")


def resolve(name_or_path: str) -> Path:
    """A suite name (a file in suites/configs) or a path to a TOML file."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        return path
    return CONFIG_DIR / f"{name_or_path}.toml"


def available() -> dict[str, str]:
    """Shipped suite names and their descriptions."""
    out = {}
    for path in sorted(CONFIG_DIR.glob("*.toml")):
        with path.open("rb") as f:
            out[path.stem] = tomllib.load(f).get("description", "")
    return out


def load(name_or_path: str, impl_names: list[str] | None = None) -> Suite:
    if not name_or_path.strip():
        raise SuiteError(f"expected a suite name ({', '.join(available())}) or a TOML path, got {name_or_path!r}")
    path = resolve(name_or_path)
    if path.is_dir():
        raise SuiteError(f"{path}: is a directory, expected a suite TOML file")
    if not path.is_file():
        raise SuiteError(f"{path}: no such suite file (shipped suites: {', '.join(available())})")
    try:
        raw_bytes = path.read_bytes()
    except OSError as exc:
        raise SuiteError(f"{path}: cannot read the suite file: {exc.strerror}") from None
    try:
        raw = tomllib.loads(raw_bytes.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SuiteError(f"{path}: not valid TOML: {exc}") from None
    return _build(raw, path, hashlib.sha256(raw_bytes).hexdigest()[:16], impl_names)


def _fail(path: Path, key: str, value: object, why: str) -> SuiteError:
    return SuiteError(f"{path}: {key} = {value!r}: {why}")


def _list_of(raw: dict, key: str, kind: type, path: Path, default: list | None = None) -> list:
    value = raw.get(key, default)
    if value is None:
        raise _fail(path, key, value, "required")
    if not isinstance(value, list) or not value or not all(isinstance(v, kind) for v in value):
        raise _fail(path, key, value, f"expected a non-empty list of {kind.__name__}")
    _unique(value, key, path)
    return value


def first_repeat(values: list) -> object | None:
    """The first value listed twice, else None: a repeated value would run (and write) the same rows twice."""
    return next((v for i, v in enumerate(values) if v in values[:i]), None)


def _unique(values: list, key: str, path: Path) -> None:
    repeated = first_repeat(values)
    if repeated is not None:
        raise _fail(path, key, values, f"{repeated!r} is listed twice")


def _choices(raw: dict, key: str, allowed: list[str] | tuple[str, ...], path: Path, default: list | None = None):
    values = _list_of(raw, key, str, path, default)
    for v in values:
        if v not in allowed:
            raise _fail(path, key, v, f"expected one of {', '.join(allowed)}")
    return tuple(values)


def _build(raw: dict, path: Path, file_hash: str, impl_names: list[str] | None) -> Suite:
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise _fail(path, sorted(unknown)[0], raw[sorted(unknown)[0]], f"unknown key; expected {sorted(TOP_KEYS)}")
    seed = raw.get("seed", 0)
    if type(seed) is not int or seed not in SEED_RANGE:
        raise _fail(path, "seed", seed, "expected an integer in [0, 2**63)")
    name = _suite_name(raw, path)
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise _fail(path, "description", description, "expected a string")
    impls = _impl_choices(raw, [*(impl_names or moe_impls.names()), EP_IMPL], path)
    if raw.get("baselines") == []:
        baselines = ()
    else:
        baselines = _choices(raw, "baselines", list(moe_impls.BASELINES), path, default=list(moe_impls.BASELINES))
    dtypes = _choices(raw, "dtypes", DTYPES, path, default=["float32"])
    modes = _choices(raw, "modes", MODES, path, default=["forward"])
    routings = _routings(raw, path, default=["softmax_topk"])
    timing = _timing(raw.get("timing", {}), path)
    shapes = raw.get("shapes")
    if not isinstance(shapes, list) or not shapes or not all(isinstance(s, dict) for s in shapes):
        raise _fail(path, "shapes", shapes, "expected one or more [[shapes]] tables")
    points: dict[str, Point] = {}
    for i, shape in enumerate(shapes):
        where = f"shapes[{i}]"
        fields = _shape_fields(shape, where, path)
        shape_dtypes = _choices(fields, "dtypes", DTYPES, path, default=list(dtypes))
        shape_modes = _choices(fields, "modes", MODES, path, default=list(modes))
        shape_routings = _routings(fields, path, default=routings)
        for key in ("dtypes", "modes", "routing"):
            fields.pop(key, None)
        for tokens in fields.pop("tokens"):
            for dtype in shape_dtypes:
                for mode in shape_modes:
                    for routing in shape_routings:
                        point = Point(tokens=tokens, dtype=dtype, mode=mode, routing=routing, seed=seed, **fields)
                        try:
                            point.moe_config()
                        except ValueError as exc:
                            raise _fail(path, f"shapes[{i}]", shape.get("name", i), f"{routing}: {exc}") from None
                        if point.point_id in points:
                            why = f"repeats the point T={tokens} {dtype} {mode} {routing} of an earlier shape"
                            raise _fail(path, where, point.shape, why)
                        points[point.point_id] = point
    return Suite(
        name=name,
        description=description,
        path=path,
        file_hash=file_hash,
        seed=seed,
        impls=impls,
        baselines=baselines,
        dtypes=tuple(sorted({p.dtype for p in points.values()})),
        timing=timing,
        points=tuple(points.values()),
        nproc=_nproc(raw, path, impls, list(points.values())),
    )


def _suite_name(raw: dict, path: Path) -> str:
    """The results directory's name: `name`, checked, or the file's stem made safe (spaces, '..' cannot escape)."""
    if "name" not in raw:
        return re.sub(r"[^A-Za-z0-9._-]", "_", path.stem).lstrip(".") or "suite"
    name = raw["name"]
    if not isinstance(name, str) or not NAME.fullmatch(name):
        why = "expected letters, digits, '.', '_' or '-', not starting with '.' (it names the results directory)"
        raise _fail(path, "name", name, why)
    return name


def _nproc(raw: dict, path: Path, impls: tuple[str, ...], points: list[Point]) -> tuple[int, ...]:
    """World sizes of an expert-parallel suite, checked against every point (see the module docstring)."""
    if EP_IMPL not in impls:
        if "nproc" in raw:
            raise _fail(path, "nproc", raw["nproc"], f"only a suite with impls containing {EP_IMPL!r} runs on ranks")
        return ()
    nproc = raw.get("nproc", [1])
    if not isinstance(nproc, list) or not nproc or not all(type(n) is int and n > 0 for n in nproc):
        raise _fail(path, "nproc", nproc, "expected a non-empty list of positive integers (world sizes)")
    for n in nproc:
        check_world_size(points, n, path)
    return tuple(sorted(set(nproc)))


def check_world_size(points: list[Point] | tuple[Point, ...], world_size: int, path: Path) -> None:
    """SuiteError unless every point can run expert parallel on `world_size` ranks."""
    for p in points:
        if p.num_experts % world_size:
            why = f"num_experts ({p.num_experts}) must be divisible by the world size ({world_size})"
            raise _fail(path, "nproc", world_size, f"{EP_IMPL}: shape {p.shape!r}: {why}")
        if p.mode != "forward":
            raise _fail(path, "modes", p.mode, f"{EP_IMPL} measures the forward pass only")


def _impl_choices(raw: dict, allowed: list[str], path: Path) -> tuple[str, ...]:
    """Named implementations, `<impl>+compile` and plug-ins; transformers peers are dropped where it is absent."""
    absent = moe_impls.peers.absent()
    values = _list_of(raw, "impls", str, path)
    for v in values:
        if v not in allowed and v not in absent and not moe_impls.registry.is_known(v):
            expected = f"one of {', '.join(allowed)}, <impl>+compile, a plug-in or module.path:factory"
            raise _fail(path, "impls", v, f"expected {expected}")
    return tuple(v for v in values if v not in absent)


def _routings(raw: dict, path: Path, default: list[str]) -> list[str]:
    routings = _list_of(raw, "routing", str, path, default=default)
    for r in routings:
        try:
            parse_routing(r)
        except ValueError as exc:
            raise _fail(path, "routing", r, str(exc)) from None
    return routings


def _timing(raw: object, path: Path) -> TimingSettings:
    if not isinstance(raw, dict):
        raise _fail(path, "timing", raw, "expected a [timing] table")
    fields = {f.name: f for f in dataclasses.fields(TimingSettings)}
    for key, value in raw.items():
        if key not in fields:
            raise _fail(path, f"timing.{key}", value, f"unknown key; expected {sorted(fields)}")
        default = fields[key].default
        if not _same_kind(value, default):
            raise _fail(path, f"timing.{key}", value, f"expected {type(default).__name__}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            _timing_bound(key, value, path)
    try:
        timing = TimingSettings(**raw)
    except (TypeError, ValueError) as exc:
        raise _fail(path, "timing", raw, str(exc)) from None
    if timing.min_reps > timing.max_reps:
        raise _fail(path, "timing.min_reps", timing.min_reps, f"must be <= timing.max_reps ({timing.max_reps})")
    return timing


def _same_kind(value: object, default: object) -> bool:
    """TOML's type for a TimingSettings field: a bool for a bool, an int for an int, either number for a float."""
    if isinstance(value, bool) or isinstance(default, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return type(value) is type(default)


def _timing_bound(key: str, value: float, path: Path) -> None:
    """Finite, >= 0, and within what one row may ask for (MAX_MS, MAX_REPS)."""
    low = 1 if key == "max_reps" else 0
    high = MAX_MS if key.endswith("_ms") else MAX_REPS if key.endswith("_reps") else math.inf
    if not (math.isfinite(value) and low <= value <= high):
        limit = f" and <= {high:g}" if high < math.inf else ""
        raise _fail(path, f"timing.{key}", value, f"expected a finite number >= {low}{limit}")


def _shape_fields(shape: dict, where: str, path: Path) -> dict:
    unknown = set(shape) - SHAPE_KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise _fail(path, f"{where}.{key}", shape[key], f"unknown key; expected {sorted(SHAPE_KEYS)}")
    fields = dict(shape)
    if "preset" in fields:
        fields = {**_preset_shape(fields.pop("preset"), where, path), **fields}
    fields.setdefault("name", where)
    fields["shape"] = fields.pop("name")
    fields.setdefault("activation", "swiglu")
    for key in ("d_model", "d_ff", "num_experts", "top_k"):
        value = fields.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise _fail(path, f"{where}.{key}", value, "expected a positive integer")
    tokens = fields.get("tokens")
    if not isinstance(tokens, list) or not tokens or not all(type(t) is int and 0 < t <= MAX_TOKENS for t in tokens):
        why = f"expected a non-empty list of positive integers <= {MAX_TOKENS} (MAX_TOKENS)"
        raise _fail(path, f"{where}.tokens", tokens, why)
    _unique(tokens, f"{where}.tokens", path)
    cf = fields.get("capacity_factor")
    if cf is not None and (type(cf) not in (int, float) or not 0 < cf <= MAX_CAPACITY_FACTOR):
        why = f"expected a number in (0, {MAX_CAPACITY_FACTOR:g}] (omit it for dropless)"
        raise _fail(path, f"{where}.capacity_factor", cf, why)
    if not isinstance(fields["shape"], str) or not fields["shape"]:
        raise _fail(path, f"{where}.name", fields["shape"], "expected a non-empty string")
    if not isinstance(fields.get("normalize_topk", True), bool):
        raise _fail(path, f"{where}.normalize_topk", fields["normalize_topk"], "expected true or false")
    try:
        MoEConfig(**{k: fields[k] for k in ("d_model", "d_ff", "num_experts", "top_k", "activation")})
    except ValueError as exc:
        raise _fail(path, where, fields["shape"], str(exc)) from None
    return fields


def _preset_shape(name: object, where: str, path: Path) -> dict:
    """A real model's MoE layer shape, from the same presets `moe-bench calc` uses."""
    try:
        from analysis import models

        layer = models.from_name(str(name)).moe_layer()
    except (ImportError, KeyError, ValueError) as exc:
        raise _fail(path, f"{where}.preset", name, str(exc).strip("'\"")) from None
    cfg = layer if isinstance(layer, MoEConfig) else layer.config
    return {
        "name": str(name),
        "d_model": cfg.d_model,
        "d_ff": cfg.d_ff,
        "num_experts": cfg.num_experts,
        "top_k": cfg.top_k,
        "activation": cfg.activation,
        "normalize_topk": cfg.normalize_topk,
    }
