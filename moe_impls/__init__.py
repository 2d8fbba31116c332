"""MoE layers under test, over one shared set of weights: routers, implementations, losses, dense baselines.

cfg = MoEConfig(d_model=512, d_ff=1024, num_experts=8, top_k=2)
weights = MoEWeights(cfg)
layer = moe_impls.get("sort_group")(weights)
y, routing = layer(x)
layer = moe_impls.resolve("hf_grouped_mm+compile")(weights)   # peers, compiled variants, plug-ins by name
"""

# Each family registers itself with the registry when imported here; the registry imports none of them.
from moe_impls import compiled, dense_all, loop, padded, peers, plugins, registry, sort_group  # noqa: F401
from moe_impls.config import ACTIVATIONS, ROUTERS, SKEWS, MoEConfig, SyntheticRouting
from moe_impls.dense import BASELINES, DENSE_BASELINES, DenseFFN, flop_matched, param_matched
from moe_impls.expert_parallel import ExpertParallelMoE  # not registered: it needs a process group
from moe_impls.hf import from_transformers
from moe_impls.layer import LayerRecord, MoELayer
from moe_impls.registry import Impl, get, names, register, resolve
from moe_impls.routing import Router, RoutingRecord
from moe_impls.weights import MoEWeights

REFERENCE = "dense_all"

__all__ = [
    "ACTIVATIONS",
    "BASELINES",
    "DENSE_BASELINES",
    "REFERENCE",
    "ROUTERS",
    "SKEWS",
    "DenseFFN",
    "Impl",
    "ExpertParallelMoE",
    "LayerRecord",
    "MoEConfig",
    "MoELayer",
    "MoEWeights",
    "Router",
    "RoutingRecord",
    "SyntheticRouting",
    "flop_matched",
    "from_transformers",
    "get",
    "names",
    "param_matched",
    "register",
    "resolve",
]
