"""What a suite file describes once it is checked: a `Suite` of measured `Point`s (see suites/spec.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import moe_impls
from moe_impls import MoEConfig, SyntheticRouting
from suites.timing_settings import TimingSettings


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
    model: str | None = None  # a transformers model_type or config.json: its own MoE block, router and experts

    def moe_config(self) -> MoEConfig:
        """The layer the point measures; for a model's block, its routed experts' dimensions (they size the dense
        baselines and the predictions; the block's own router, shared experts and gates run unchanged)."""
        router, synthetic = parse_routing(self.routing, self.seed)
        if router == MODEL_ROUTING:
            router = "softmax_topk"  # the nearest of ours: what fits and what the routed experts cost
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
        fields = dataclasses.asdict(self)
        if fields["model"] is None:
            del fields["model"]  # so a shape's point keeps the id it had before models existed
        blob = json.dumps(fields, sort_keys=True)
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
    model_impls: tuple[str, ...] = ()  # the transformers experts implementations a model point's rows run

    def row_names(self, point: Point, impls: list[str], baselines: list[str]) -> list[str]:
        """The rows of `point`: a model's block runs the experts implementations, a shape our layers."""
        return [*(self.model_impls if point.model else impls), *baselines]


MODEL_ROUTING = "model"  # a model point's routing: its block's own router


def parse_routing(text: str, seed: int = 0) -> tuple[str, SyntheticRouting | None]:
    """'softmax_topk' -> (router, None); 'zipf:1.2' -> ('softmax_topk', SyntheticRouting('zipf', zipf_s=1.2));
    'model' -> ('model', None)."""
    if text in moe_impls.ROUTERS or text == MODEL_ROUTING:
        return text, None
    kind, _, arg = text.partition(":")
    if kind in ("uniform", "collapse") and not arg:
        return "softmax_topk", SyntheticRouting(kind, seed=seed)
    if kind in ("zipf", "hot") and arg:
        value = float(arg)
        key = "zipf_s" if kind == "zipf" else "hot_fraction"
        return "softmax_topk", SyntheticRouting(kind, seed=seed, **{key: value})
    raise ValueError(f"expected a router {moe_impls.ROUTERS} or uniform, zipf:S, hot:P, collapse; got {text!r}")
