"""The terminal text of `moe-bench calc`: the report dict of `analysis.calc` turned into aligned lines.

Numbers stay numbers in the report (and in `--json`); only here do they become '12.88B' or '93.41 GB'.
"""

from __future__ import annotations

from typing import Any

from analysis.exact_counts import NUM_EXPERTS_KEYS, TOP_K_KEYS


def si(n: float, unit: str = "") -> str:
    """12880000000 -> '12.88B': three significant decimals, so small and large models read alike."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}{unit}"
    return f"{n:g}{unit}" if n else "0"


def gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def gflop(n: int) -> str:
    return f"{n / 1e9:.2f} GFLOP"


def as_published(n: float) -> str:
    """46.7e9 -> '46.7B': the figure with the digits it was published with."""
    return f"{n / 1e9:g}B" if n >= 1e9 else f"{n / 1e6:g}M"


def format_text(r: dict[str, Any]) -> str:
    """The whole terminal text of `calc.report`: our formula's table, then the exact counts beside it."""
    cmp = r["comparison"]
    if r["formula"] is None:
        lines = [f"{r['model']} ({r['input']}): our formula cannot express it: {r['formula_error']}"]
    else:
        lines = [format_report(r["formula"])]
        if cmp is not None and cmp["differs"]:  # first, so that no one reads the formula's figures unwarned
            lines.insert(0, f"!! {_disagree(cmp)}: the formula's figures below are off; see the exact counts")
        if r["formula_from"] == "text_config":
            lines.append("(our formula read the text_config of this composite config)")
    if r["exact"] is not None:
        lines += ["", *_exact(r)]
    elif r["input"] != "preset":
        lines += ["", f"exact counts: none: {r['exact_error']}"]
    return "\n".join(lines)


def _exact(r: dict[str, Any]) -> list[str]:
    """The exact counts of transformers' model, beside the formula's where there is one, differences marked."""
    ex, cmp = r["exact"], r["comparison"]
    top_k, experts = ex["top_k"], ex["num_experts"]
    built = "" if ex["built_from"] == "config" else " from the text_config"
    lines = [
        f"exact counts: transformers {ex['model_class']}{built} on the meta device ({ex['build_s']:.2f} s); "
        f"routed experts: {ex['experts_rule']}"
    ]
    if ex["breakdown"]["routed_experts"]:
        if top_k and experts:
            lines.append(
                f"active = total - routed x (1 - {top_k['value']}/{experts['value']}): top_k from "
                f"{top_k['key']}, experts from {experts['key']}"
            )
        else:
            missing = [keys for keys, v in ((TOP_K_KEYS, top_k), (NUM_EXPERTS_KEYS, experts)) if v is None]
            lines.append(f"active: unknown, the config sets none of {', '.join(k for ks in missing for k in ks)}")
    keys = [*ex["breakdown"], "total", "active"]
    label = {"active": "active / token"}
    if cmp is None:
        counts = {**ex["breakdown"], "total": ex["total_params"], "active": ex["active_params"]}
        lines.append(f"{'component':<16}{'exact':>14}")
        lines += [f"{label.get(k, k):<16}{_count(counts[k]):>14}" for k in keys if counts[k] != 0]
    else:
        lines.append(f"{'component':<16}{'formula':>14}{'exact':>14}{'formula/exact-1':>17}")
        for key in keys:
            row = cmp["rows"][key]
            if row["formula"] == 0 and row["exact"] == 0:
                continue
            mark = f"   <- differs (> {cmp['threshold']:.1%})" if row["differs"] else ""
            lines.append(
                f"{label.get(key, key):<16}{si(row['formula']):>14}{_count(row['exact']):>14}"
                f"{_pct(row['rel_diff']):>17}{mark}"
            )
        if cmp["differs"]:
            lines.append(_disagree(cmp))
    active_bytes = "n/a" if ex["active_weight_bytes"] is None else gb(ex["active_weight_bytes"])
    lines.append(f"exact weights ({r['dtype']}): {gb(ex['weight_bytes'])} resident, {active_bytes} active per token")
    return lines


def _disagree(cmp: dict[str, Any]) -> str:
    t, a = cmp["rows"]["total"], cmp["rows"]["active"]
    return f"our formula and transformers disagree: total {_pct(t['rel_diff'])}, active {_pct(a['rel_diff'])}"


def _count(n: int | None) -> str:
    return "n/a" if n is None else si(n)


def _pct(rel: float | None) -> str:
    return "n/a" if rel is None else f"{rel:+.2%}"


def format_report(r: dict[str, Any]) -> str:
    """The human table: components, then memory against per-token cost, then the equal-active dense model."""
    lines = [*_title(r), *_components(r), *_costs(r), *_dense_equal(r)]
    if r["published"] is not None:
        lines += _published(r)
    return "\n".join(lines)


def _title(r: dict[str, Any]) -> list[str]:
    layer = r["moe_layer"]
    shared = (
        f" + {layer['num_shared_experts']} shared of d_ff {layer['shared_d_ff']}" if layer["num_shared_experts"] else ""
    )
    stacks = (
        f"{r['encoder_layers']} encoder + {r['layers'] - r['encoder_layers']} decoder"
        if r["encoder_layers"]
        else r["layers"]
    )
    return [
        f"{r['model']}: {stacks} layers, {r['moe_layers']} MoE ({layer['num_experts']} experts of d_ff "
        f"{layer['d_ff']}, top-{layer['top_k']}{shared}), d_model {layer['d_model']}",
        "",
    ]


def _components(r: dict[str, Any]) -> list[str]:
    total, active = r["total_params"], r["active_params"]
    lines = [f"{'component':<16}{'total params':>14}{'active / token':>16}"]
    for key, counts in r["breakdown"].items():
        lines.append(f"{key:<16}{si(counts['total']):>14}{si(counts['active']):>16}")
    lines.append(f"{'total':<16}{si(total):>14}{si(active):>16}   ({active / total:.1%} of the weights per token)")
    if r["checkpoint_params"] != total:
        lines.append(f"{'checkpoint':<16}{si(r['checkpoint_params']):>14}   (with the MTP module, not in total)")
    return lines


def _costs(r: dict[str, Any]) -> list[str]:
    flops, moe, dt = r["flops_per_token"], r["moe_flops_per_token"], r["dtype"]
    rows = [
        (f"resident weights ({dt})", gb(r["weight_bytes"]), "every expert must be in memory"),
        (f"active weights ({dt})", gb(r["active_weight_bytes"]), "what one token touches"),
        ("forward FLOPs / token", gflop(flops), f"= 2 x {si(r['matmul_params_per_token'])} matmul weights"),
        ("  of which in MoE layers", gflop(moe), f"({moe / flops:.1%})"),
        (
            f"  + attention at context {r['context']}",
            gflop(r["attention_flops_per_token"]),
            "(QK^T and AV, grows with context)",
        ),
    ]
    return ["", *(f"{label:<32}{value:>14}   {note}" for label, value, note in rows)]


def _dense_equal(r: dict[str, Any]) -> list[str]:
    total, dense = r["total_params"], r["dense_equal_active"]
    return [
        "",
        f"dense model of equal active parameters: {si(dense['total_params'])} params, "
        f"{gb(dense['weight_bytes'])} ({r['dtype']}), {gflop(dense['flops_per_token'])} / token",
        f"=> memory of a {si(total)} model ({total / dense['total_params']:.1f}x the equal-active dense one), "
        f"per-token compute of a {si(dense['total_params'])} dense model",
    ]


def _published(r: dict[str, Any]) -> list[str]:
    pub, total = r["published"], r["total_params"]
    ours = pub["comparable_active_params"]
    excl = f" (without {', '.join(pub['active_excludes'])})" if pub["active_excludes"] else ""
    lines = [
        "",
        f"published: {as_published(pub['total'])} total (ours {total / pub['total'] - 1:+.2%}), "
        f"{as_published(pub['active'])} active{excl} (ours {si(ours)}, {ours / pub['active'] - 1:+.2%})",
        f"  source: {pub['source']}",
        f"  active counts: {pub['active_counts']}",
    ]
    if pub["note"]:
        lines.append(f"  note: {pub['note']}")
    return lines


def format_ep(ep: dict[str, Any]) -> str:
    """The expert-parallel table: predicted ms per world size, and the world size where communication wins."""
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
        shown = f"{ratio:>13.2f}" if ratio != float("inf") else f"{'no comm':>13}"
        lines.append(
            f"  {row['world_size']:>5} {row['dispatch_s']:>12.3f} {row['combine_s']:>11.3f} {row['compute_s']:>11.3f} "
            f"{shown}"
        )
    stop = ep["stops_paying_at"]
    lines.append(
        f"  communication outweighs expert compute from {stop} ranks on"
        if stop
        else "  compute stays above communication at every world size E allows"
    )
    return "\n".join(lines)
