"""`moe-bench calc MODEL_OR_FILE`: what a real MoE model holds in memory against what one token costs.

MODEL_OR_FILE is a preset name (`analysis.models.PRESETS`), a TOML/JSON file of `ModelConfig` fields, or a
transformers `config.json`. The human table shows the article's point side by side: every parameter is resident,
but a token pays only for its active ones, like a dense model of that size. `--json` prints one object with the
same numbers as integers. Counting conventions are in `analysis.accounting`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from typing import Any

from analysis import accounting as acc
from analysis.calc_text import format_ep, format_report
from analysis.model_files import load_model
from analysis.models import ModelConfig, Published, names

# --ep options: a rate or a size of 0 divides by zero and a negative one prints negative times; 0 latency is ideal
EP_POSITIVE = ("tokens_per_rank", "ranks_per_node", "intra_gbs", "inter_gbs", "tflops")
EP_NON_NEGATIVE = ("intra_us", "inter_us")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("calc", help="parameter, FLOP and memory accounting of a real MoE model")
    p.add_argument("model", metavar="MODEL_OR_FILE", help=f"preset ({', '.join(names())}) or TOML/JSON path")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--dtype", choices=tuple(acc.DTYPE_BYTES), default="bf16", help="weight dtype (default bf16)")
    p.add_argument(
        "--context", type=int, default=4096, help="positions a token attends to, for attention FLOPs (default 4096)"
    )
    ep = p.add_argument_group("expert parallelism (--ep): where sharding experts over ranks stops paying off")
    ep.add_argument("--ep", action="store_true", help="add the EP cost model's table (analysis/ep_costs.py)")
    ep.add_argument("--tokens-per-rank", type=int, default=4096, help="tokens each rank routes (default 4096)")
    ep.add_argument("--ranks-per-node", type=int, default=8, help="GPUs per node (default 8)")
    ep.add_argument("--intra-gbs", type=float, default=450.0, help="NVLink-class GB/s per rank (default 450)")
    ep.add_argument("--intra-us", type=float, default=10.0, help="intra-node all-to-all latency, us (default 10)")
    ep.add_argument("--inter-gbs", type=float, default=50.0, help="InfiniBand-class GB/s per rank (default 50)")
    ep.add_argument("--inter-us", type=float, default=25.0, help="inter-node all-to-all latency, us (default 25)")
    ep.add_argument("--tflops", type=float, default=400.0, help="achieved expert matmul TFLOP/s (default 400)")
    p.set_defaults(func=run)


def ep_table(cfg: ModelConfig, dtype: str, args: argparse.Namespace) -> dict[str, Any]:
    """Predicted dispatch/combine/compute per world size for the model's MoE layer, and where EP stops paying."""
    from analysis import ep_costs

    shape = ep_costs.ExpertShape.from_config(cfg.moe_layer().config, acc.DTYPE_BYTES[dtype])
    cluster = ep_costs.Cluster(
        args.ranks_per_node,
        ep_costs.Link(args.intra_gbs * 1e9, args.intra_us * 1e-6),
        ep_costs.Link(args.inter_gbs * 1e9, args.inter_us * 1e-6),
    )
    rows = []
    for r in ep_costs.candidate_world_sizes(shape.num_experts, cluster.ranks_per_node):
        cost = ep_costs.ep_cost(shape, args.tokens_per_rank, r, cluster, args.tflops * 1e12)
        ms = {k: getattr(cost, k) * 1e3 for k in ("dispatch_s", "combine_s", "compute_s")}
        rows.append({"world_size": r, **ms, "compute_to_comm": cost.compute_to_comm})
    stop = ep_costs.where_ep_stops_paying(shape, args.tokens_per_rank, cluster, args.tflops * 1e12)
    return {
        "assumed": {
            k: getattr(args, k)
            for k in ("tokens_per_rank", "ranks_per_node", "intra_gbs", "intra_us", "inter_gbs", "inter_us", "tflops")
        },
        "world_sizes": rows,
        "stops_paying_at": stop,
    }


def _check_ep_args(args: argparse.Namespace) -> None:
    """ValueError naming the first --ep option out of range (see EP_POSITIVE, EP_NON_NEGATIVE)."""
    for key in EP_POSITIVE + EP_NON_NEGATIVE:
        value, positive = getattr(args, key), key in EP_POSITIVE
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise ValueError(
                f"--{key.replace('_', '-')} must be a finite number {'> 0' if positive else '>= 0'}, got {value}"
            )


def report(cfg: ModelConfig, dtype: str, context: int, published: Published | None = None) -> dict[str, Any]:
    """Every number the table shows, as integers, in one JSON-ready dict."""
    total, active = acc.breakdown(cfg), acc.active_breakdown(cfg)
    dense = acc.equal_active_dense(cfg)
    layer = cfg.moe_layer()
    out: dict[str, Any] = {
        "model": cfg.name,
        "total_params": sum(total.values()),
        "active_params": sum(active.values()),
        "checkpoint_params": acc.checkpoint_params(cfg),
        "breakdown": {key: {"total": total[key], "active": active[key]} for key in acc.BREAKDOWN_KEYS},
        "layers": cfg.num_layers + cfg.num_encoder_layers,
        "encoder_layers": cfg.num_encoder_layers,
        "moe_layers": cfg.num_moe_layers if cfg.is_moe else 0,
        "moe_layer": {
            **{k: getattr(layer.config, k) for k in ("d_model", "d_ff", "num_experts", "top_k", "activation")},
            "num_shared_experts": layer.num_shared_experts,
            "shared_d_ff": layer.shared_d_ff if layer.num_shared_experts else 0,
        },
        "dtype": dtype,
        "weight_bytes": acc.weight_bytes(sum(total.values()), dtype),
        "active_weight_bytes": acc.weight_bytes(sum(active.values()), dtype),
        "matmul_params_per_token": acc.matmul_params_per_token(cfg),
        "flops_per_token": acc.flops_per_token(cfg),
        "moe_flops_per_token": acc.moe_flops_per_token(cfg),
        "context": context,
        "attention_flops_per_token": acc.attention_flops_per_token(cfg, context),
        "dense_equal_active": {
            "total_params": acc.total_params(dense),
            "flops_per_token": acc.flops_per_token(dense),
            "weight_bytes": acc.weight_bytes(acc.total_params(dense), dtype),
        },
        "published": None,
    }
    if published is not None:
        out["published"] = {
            **dataclasses.asdict(published),
            "active_excludes": list(published.active_excludes),
            "comparable_active_params": acc.active_params_excluding(cfg, published.active_excludes),
        }
    return out


def run(args: argparse.Namespace) -> int:
    try:
        if args.context < 0:
            raise ValueError(f"--context must be >= 0, got {args.context}")
        if args.ep:
            _check_ep_args(args)
        cfg, published = load_model(args.model)
        r = report(cfg, args.dtype, args.context, published)
        if args.ep:
            r["expert_parallel"] = ep_table(cfg, args.dtype, args)
    except ValueError as exc:
        print(f"moe-bench calc: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        print(format_report(r) + (format_ep(r["expert_parallel"]) if args.ep else ""))
    return 0
