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
from pathlib import Path
from typing import Any

from analysis import accounting as acc
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


def format_ep(ep: dict[str, Any]) -> str:
    a = ep["assumed"]
    lines = [
        "",
        f"Expert parallelism, {a['tokens_per_rank']} tokens per rank, {a['ranks_per_node']} ranks per node, "
        f"links {a['intra_gbs']:g} GB/s + {a['intra_us']:g} us (intra) / {a['inter_gbs']:g} GB/s + {a['inter_us']:g} us "
        f"(inter), experts at {a['tflops']:g} TFLOP/s (assumed, not measured):",
        f"  {'ranks':>5} {'dispatch ms':>12} {'combine ms':>11} {'compute ms':>11} {'compute/comm':>13}",
    ]
    for row in ep["world_sizes"]:
        ratio = row["compute_to_comm"]
        lines.append(
            f"  {row['world_size']:>5} {row['dispatch_s']:>12.3f} {row['combine_s']:>11.3f} {row['compute_s']:>11.3f} "
            f"{ratio:>13.2f}"
            if ratio != float("inf")
            else f"  {row['world_size']:>5} {row['dispatch_s']:>12.3f} {row['combine_s']:>11.3f} {row['compute_s']:>11.3f} "
            f"{'no comm':>13}"
        )
    stop = ep["stops_paying_at"]
    lines.append(
        f"  communication outweighs expert compute from {stop} ranks on"
        if stop
        else "  compute stays above communication at every world size E allows"
    )
    return "\n".join(lines)


def load_model(spec: str) -> tuple[ModelConfig, Published | None]:
    """A preset (with its published figures) or a config file; ValueError with one line on any mistake."""
    if spec in PRESETS:
        return PRESETS[spec].config, PRESETS[spec].published
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"{spec!r} is neither a preset ({', '.join(names())}) nor an existing file")
    try:
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        kind = "TOML" if path.suffix == ".toml" else "JSON"
        raise ValueError(f"{path}: not valid {kind}: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object of ModelConfig fields, got {type(data).__name__}")
    try:
        if any(key in data for key in HF_MARKERS):
            _check_hf_lists(data)
            return from_hf_config(data, name=data.get("_name_or_path") or path.stem), None
        return _model_config(data, path), None
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    except TypeError as exc:  # a value of a type no check above foresaw, e.g. a string where a count goes
        raise ValueError(f"{path}: a value has the wrong type: {exc}") from None


def _check_hf_lists(data: dict[str, Any]) -> None:
    for key in HF_LISTS:
        value = data.get(key)
        if value is not None and not (isinstance(value, list) and all(type(i) is int for i in value)):
            raise ValueError(f"transformers config: {key} = {value!r}: expected a list of layer indices")


def _check_ep_args(args: argparse.Namespace) -> None:
    """ValueError naming the first --ep option out of range (see EP_POSITIVE, EP_NON_NEGATIVE)."""
    for key in EP_POSITIVE + EP_NON_NEGATIVE:
        value, positive = getattr(args, key), key in EP_POSITIVE
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise ValueError(
                f"--{key.replace('_', '-')} must be a finite number {'> 0' if positive else '>= 0'}, got {value}"
            )


def _model_config(data: dict[str, Any], path: Path) -> ModelConfig:
    unknown = sorted(set(data) - MODEL_FIELDS)
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r}; ModelConfig fields are {', '.join(sorted(MODEL_FIELDS))}")
    missing = [f for f in REQUIRED_FIELDS if f not in data]
    if missing:
        raise ValueError(f"missing field {missing[0]!r} (required: {', '.join(REQUIRED_FIELDS)})")
    return ModelConfig(**{"name": path.stem, **data})


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


def _si(n: float, unit: str = "") -> str:
    """12880000000 -> '12.88B': three significant decimals, so small and large models read alike."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}{unit}"
    return f"{n:g}{unit}" if n else "0"


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def _gflop(n: int) -> str:
    return f"{n / 1e9:.2f} GFLOP"


def _as_published(n: float) -> str:
    """46.7e9 -> '46.7B': the figure with the digits it was published with."""
    return f"{n / 1e9:g}B" if n >= 1e9 else f"{n / 1e6:g}M"


def format_report(r: dict[str, Any]) -> str:
    """The human table: components, then memory against per-token cost, then the equal-active dense model."""
    layer, total, active = r["moe_layer"], r["total_params"], r["active_params"]
    shared = (
        f" + {layer['num_shared_experts']} shared of d_ff {layer['shared_d_ff']}" if layer["num_shared_experts"] else ""
    )
    stacks = (
        f"{r['encoder_layers']} encoder + {r['layers'] - r['encoder_layers']} decoder"
        if r["encoder_layers"]
        else r["layers"]
    )
    lines = [
        f"{r['model']}: {stacks} layers, {r['moe_layers']} MoE ({layer['num_experts']} experts of d_ff "
        f"{layer['d_ff']}, top-{layer['top_k']}{shared}), d_model {layer['d_model']}",
        "",
        f"{'component':<16}{'total params':>14}{'active / token':>16}",
    ]
    for key, counts in r["breakdown"].items():
        lines.append(f"{key:<16}{_si(counts['total']):>14}{_si(counts['active']):>16}")
    lines.append(f"{'total':<16}{_si(total):>14}{_si(active):>16}   ({active / total:.1%} of the weights per token)")
    if r["checkpoint_params"] != total:
        lines.append(f"{'checkpoint':<16}{_si(r['checkpoint_params']):>14}   (with the MTP module, not in total)")
    flops, moe, dense, dt = r["flops_per_token"], r["moe_flops_per_token"], r["dense_equal_active"], r["dtype"]
    rows = [
        (f"resident weights ({dt})", _gb(r["weight_bytes"]), "every expert must be in memory"),
        (f"active weights ({dt})", _gb(r["active_weight_bytes"]), "what one token touches"),
        ("forward FLOPs / token", _gflop(flops), f"= 2 x {_si(r['matmul_params_per_token'])} matmul weights"),
        ("  of which in MoE layers", _gflop(moe), f"({moe / flops:.1%})"),
        (
            f"  + attention at context {r['context']}",
            _gflop(r["attention_flops_per_token"]),
            "(QK^T and AV, grows with context)",
        ),
    ]
    lines += ["", *(f"{label:<32}{value:>14}   {note}" for label, value, note in rows)]
    lines += [
        "",
        f"dense model of equal active parameters: {_si(dense['total_params'])} params, "
        f"{_gb(dense['weight_bytes'])} ({dt}), {_gflop(dense['flops_per_token'])} / token",
        f"=> memory of a {_si(total)} model ({total / dense['total_params']:.1f}x the equal-active dense one), "
        f"per-token compute of a {_si(dense['total_params'])} dense model",
    ]
    pub = r["published"]
    if pub is not None:
        ours = pub["comparable_active_params"]
        excl = f" (without {', '.join(pub['active_excludes'])})" if pub["active_excludes"] else ""
        lines += [
            "",
            f"published: {_as_published(pub['total'])} total (ours {total / pub['total'] - 1:+.2%}), "
            f"{_as_published(pub['active'])} active{excl} (ours {_si(ours)}, {ours / pub['active'] - 1:+.2%})",
            f"  source: {pub['source']}",
            f"  active counts: {pub['active_counts']}",
        ]
        if pub["note"]:
            lines.append(f"  note: {pub['note']}")
    return "\n".join(lines)


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
