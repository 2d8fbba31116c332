"""`moe-bench calc MODEL_OR_FILE`: what a real MoE model holds in memory against what one token costs.

MODEL_OR_FILE is a preset name (`analysis.models.PRESETS`), a TOML/JSON file of `ModelConfig` fields, a
transformers `config.json`, or a transformers `model_type` (its default config). The human table shows the
article's point side by side: every parameter is resident, but a token pays only for its active ones, like a dense
model of that size. Counting conventions are in `analysis.accounting`.

A transformers config is also built on the meta device (`analysis.exact_counts`), and its exact counts stand beside
our formula's, component by component; a relative difference above `DIFFERS` is marked, never smoothed over. Where
the formula cannot express a config, the exact counts stand alone with the reason. `--json` prints one object:
`formula` (our report, integers), `exact`, `comparison`, each null where it does not apply, with the reason beside.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from typing import Any

from analysis import accounting as acc
from analysis import exact_counts
from analysis.calc_text import format_ep, format_text
from analysis.model_files import LoadedModel, load_model
from analysis.models import ModelConfig, Published, names

# --ep options: a rate or a size of 0 divides by zero and a negative one prints negative times; 0 latency is ideal
EP_POSITIVE = ("tokens_per_rank", "ranks_per_node", "intra_gbs", "inter_gbs", "tflops")
EP_NON_NEGATIVE = ("intra_us", "inter_us")
# |formula / exact - 1| above this is marked: weights the formula leaves out stay below it (gpt_oss's biases and
# attention sinks: -0.03%), a block it miscounts does not (qwen3_next's linear attention: -0.80% of the total).
DIFFERS = 0.005


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("calc", help="parameter, FLOP and memory accounting of a real MoE model")
    p.add_argument(
        "model",
        metavar="MODEL_OR_FILE",
        help=f"preset ({', '.join(names())}), TOML/JSON path, or transformers model_type (e.g. deepseek_v3)",
    )
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


def formula_report(cfg: ModelConfig, dtype: str, context: int, published: Published | None = None) -> dict[str, Any]:
    """Every number our formula's table shows, as integers, in one JSON-ready dict."""
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


def comparison(formula: dict[str, Any], exact: exact_counts.ExactCounts) -> dict[str, Any]:
    """Formula against exact per component, total and active: rel_diff = formula / exact - 1 (None when exact is
    0 or unknown), differs = |rel_diff| > DIFFERS (True when only one side is 0, None when exact is unknown)."""
    pairs = {
        key: (formula["breakdown"].get(key, {"total": 0})["total"], exact.breakdown[key]) for key in exact.breakdown
    }
    pairs["total"] = (formula["total_params"], exact.total)
    pairs["active"] = (formula["active_params"], exact.active)
    rows = {key: _row(ours, theirs) for key, (ours, theirs) in pairs.items()}
    return {
        "threshold": DIFFERS,
        "rows": rows,
        "differs": bool(rows["total"]["differs"] or rows["active"]["differs"]),
        "differing_components": [k for k in exact.breakdown if rows[k]["differs"]],
    }


def _row(formula: int, exact: int | None) -> dict[str, Any]:
    if exact is None:
        rel, differs = None, None
    elif exact == 0:
        rel, differs = (0.0, False) if formula == 0 else (None, True)
    else:
        rel = formula / exact - 1
        differs = abs(rel) > DIFFERS
    return {"formula": formula, "exact": exact, "rel_diff": rel, "differs": differs}


def report(model: LoadedModel, dtype: str, context: int) -> dict[str, Any]:
    """The whole JSON object: our formula's report and the exact counts, each with the reason when it is absent;
    ValueError in one line when neither exists."""
    exact, exact_error = None, model.hf_error
    if model.hf_config is not None:
        try:
            exact = exact_counts.count(model.hf_config)
        except ValueError as exc:
            exact_error = str(exc)
    if model.config is None and exact is None:
        raise ValueError(f"{model.where}: {model.formula_error}; and no exact count: {exact_error}")
    formula = None if model.config is None else formula_report(model.config, dtype, context, model.published)
    return {
        "model": model.name,
        "input": model.source,
        "dtype": dtype,
        "formula": formula,
        "formula_error": model.formula_error,
        "formula_from": model.formula_from if formula is not None else None,
        "exact": None if exact is None else exact.as_dict(dtype),
        "exact_error": exact_error,
        "comparison": None if formula is None or exact is None else comparison(formula, exact),
    }


def run(args: argparse.Namespace) -> int:
    try:
        if args.context < 0:
            raise ValueError(f"--context must be >= 0, got {args.context}")
        if args.ep:
            _check_ep_args(args)
        model = load_model(args.model)
        if args.ep and model.config is None:
            raise ValueError(f"--ep needs our formula's view of the model: {model.where}: {model.formula_error}")
        r = report(model, args.dtype, args.context)
        if args.ep:
            r["expert_parallel"] = ep_table(model.config, args.dtype, args)
    except ValueError as exc:
        print(f"moe-bench calc: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        print(format_text(r) + (format_ep(r["expert_parallel"]) if args.ep else ""))
    return 0
