"""Suite files: a TOML grid of shapes x dtypes x modes x routings, validated before any point runs.

    name = "smoke"
    impls = ["loop", "padded", "sort_group", "dense_all"]
    baselines = ["param_matched", "flop_matched"]
    dtypes = ["float32"]
    modes = ["forward", "train"]
    routing = ["softmax_topk", "zipf:1.2", "hot:0.5"]   # router kinds, or skews: uniform, zipf:S, hot:P, collapse
    [timing]                                           # any field of suites.timing_settings.TimingSettings
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

Every mistake is one `SuiteError` line naming the file, the key and the value. The keys and bounds are in
suites/spec_fields.py (top level, [timing]) and suites/spec_shapes.py ([[shapes]]); the checked result is a
`Suite` of `Point`s (suites/suite_model.py).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from moe_impls.expert_parallel import world_size_problem
from suites import spec_fields as field
from suites.schema import EP_IMPL
from suites.spec_fields import FieldError
from suites.spec_models import model_fields, model_impls
from suites.spec_shapes import shape_fields
from suites.suite_model import MODEL_ROUTING, Point, Suite

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIG_DIR = Path(__file__).parent / "configs"


class SuiteError(ValueError):
    """A suite file that cannot run; the message is one line naming file, key and value."""


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


def load(name_or_path: str) -> Suite:
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
    try:
        return _build(raw, path, hashlib.sha256(raw_bytes).hexdigest()[:16])
    except FieldError as exc:
        raise SuiteError(f"{path}: {exc}") from None


def model_suite(model: str, tokens: list[int], dtypes: list[str], modes: list[str], impls: list[str]) -> Suite:
    """`moe-bench run --model MODEL`: one [[models]] table, its rows the experts implementations `impls`."""
    raw = {
        "name": "model-"
        + re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model).parent.name if model.endswith(".json") else model),
        "description": f"the MoE block of {model} under every experts implementation",
        "dtypes": dtypes,
        "modes": modes,
        "model_impls": impls,
        "models": [{"model": model, "tokens": tokens}],
    }
    text = json.dumps(raw, sort_keys=True)
    try:
        return _build(raw, Path(f"--model {model}"), hashlib.sha256(text.encode()).hexdigest()[:16])
    except FieldError as exc:
        raise SuiteError(f"--model {model}: {exc}") from None


def _fail(path: Path, key: str, value: object, why: str) -> SuiteError:
    return SuiteError(f"{path}: {FieldError(key, value, why)}")


@dataclass(frozen=True)
class _Grid:
    """The top level's lists, which each [[shapes]] table may override, and the suite's seed."""

    dtypes: tuple[str, ...]
    modes: tuple[str, ...]
    routings: list[str]
    seed: int


def _build(raw: dict, path: Path, file_hash: str) -> Suite:
    field.check_top_keys(raw)
    seed = field.seed(raw)
    name, description = field.suite_name(raw, path), field.description(raw)
    has_models = "models" in raw
    impls = field.impls(raw) if "impls" in raw or not has_models else ()
    baselines = field.baselines(raw)
    dtypes = field.choices(raw, "dtypes", field.DTYPES, default=["float32"])
    modes = field.choices(raw, "modes", field.MODES, default=["forward"])
    grid = _Grid(dtypes, modes, field.routings(raw, default=["softmax_topk"]), seed)
    timing = field.timing(raw.get("timing", {}))
    points = _points(raw.get("shapes"), grid) if "shapes" in raw or not has_models else []
    points += _points(raw["models"], grid, "models") if has_models else []
    return Suite(
        name=name,
        description=description,
        path=path,
        file_hash=file_hash,
        seed=seed,
        impls=impls,
        baselines=baselines,
        dtypes=tuple(sorted({p.dtype for p in points})),
        timing=timing,
        points=tuple(points),
        nproc=_nproc(raw, path, impls, points),
        model_impls=model_impls(raw) if has_models else (),
    )


def _points(tables: object, grid: _Grid, key: str = "shapes") -> list[Point]:
    """Every shape's (or model's) grid of points, in file order; a point listed by two tables is refused."""
    if not isinstance(tables, list) or not tables or not all(isinstance(s, dict) for s in tables):
        raise FieldError(key, tables, f"expected one or more [[{key}]] tables")
    points: dict[str, Point] = {}
    for i, table in enumerate(tables):
        for point in _table_points(table, f"{key}[{i}]", grid):
            if point.point_id in points:
                why = (
                    f"repeats the point T={point.tokens} {point.dtype} {point.mode} {point.routing} of an earlier shape"
                )
                raise FieldError(f"{key}[{i}]", point.shape, why)
            points[point.point_id] = point
    return list(points.values())


def _table_points(table: dict, where: str, grid: _Grid) -> Iterator[Point]:
    """A table's tokens x dtypes x modes x routings, each checked to build an MoEConfig (a model's: its own
    router, and its block's dimensions)."""
    fields = model_fields(table, where) if where.startswith("models") else shape_fields(table, where)
    dtypes = field.choices(fields, "dtypes", field.DTYPES, default=list(grid.dtypes))
    modes = field.choices(fields, "modes", field.MODES, default=list(grid.modes))
    routings = [MODEL_ROUTING] if "model" in fields else field.routings(fields, default=grid.routings)
    for key in ("dtypes", "modes", "routing"):
        fields.pop(key, None)
    for tokens, dtype, mode, routing in itertools.product(fields.pop("tokens"), dtypes, modes, routings):
        point = Point(tokens=tokens, dtype=dtype, mode=mode, routing=routing, seed=grid.seed, **fields)
        try:
            point.moe_config()
        except ValueError as exc:
            raise FieldError(where, fields["shape"], f"{routing}: {exc}") from None
        yield point


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
        why = world_size_problem(p.num_experts, world_size)
        if why:
            raise _fail(path, "nproc", world_size, f"{EP_IMPL}: shape {p.shape!r}: {why}")
        if p.mode != "forward":
            raise _fail(path, "modes", p.mode, f"{EP_IMPL} measures the forward pass only")
