"""Whether a row's call fits in memory: the one rule the runner applies before it allocates anything, and that
`--plan` applies to a device profile. A call is predicted (analysis/footprint.py for the built-in layers and
the dense baselines; an implementation's own `predicted_bytes` otherwise) and skipped when it would take more
than `MEMORY_HEADROOM` of what is free once the point's weights are resident.

The rows of a point are timed together, so every row's weights are resident while any of them runs: the
implementations come first (they are what is measured), and a dense baseline is kept only when its weights
leave room for its own call and for every implementation's call that fits without it (`decide`). A baseline
that does not fit is never built, or is evicted from the worker's cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import moe_impls
from analysis import footprint
from moe_impls.routing import synthetic_expert_idx
from suites.suite_model import Point

MEMORY_HEADROOM = 0.8  # a row predicted to need more than this share of the free memory is skipped
# A model block's experts implementation whose footprint one of our rows predicts: batched_mm gathers one copy
# of the expert weights per assignment (moe_impls/peers.py), tens of GB at 128 tokens of a real model.
MODEL_FOOTPRINTS = {"batched_mm": "hf_batched_mm"}


def max_load(point: Point, tokens_per_expert: torch.Tensor | None = None) -> int:
    """The largest expert load: the routing's own when it is known (`tokens_per_expert`), exact for a synthetic
    routing, else the expected maximum of a learned router on random inputs; at most the capacity."""
    cfg = point.moe_config()
    if tokens_per_expert is not None:
        load = int(tokens_per_expert.max())
    elif cfg.synthetic is not None:
        chosen = synthetic_expert_idx(point.tokens, cfg.num_experts, cfg.top_k, cfg.synthetic)
        load = int(torch.bincount(chosen.flatten(), minlength=cfg.num_experts).max())
    else:
        load = footprint.expected_max_load(point.tokens, cfg.num_experts, cfg.top_k)
    capacity = cfg.capacity(point.tokens)
    return load if capacity is None else min(load, capacity)


def call_of(point: Point, load: int) -> footprint.Call:
    """What one call's footprint depends on, at the point's shape with largest expert load `load`."""
    elem = torch.empty((), dtype=getattr(torch, point.dtype)).element_size()
    p = point
    return footprint.Call(
        p.d_model, p.d_ff, p.num_experts, p.top_k, p.activation, p.tokens, elem, p.mode == "train", load
    )


def is_baseline(name: str) -> bool:
    return name in footprint.DENSE_WIDTH


def predicted_bytes(name: str, point: Point, call: footprint.Call) -> int | None:
    """Bytes one call of row `name` allocates beyond its weights and input; None when nothing predicts them
    (a plug-in without `predicted_bytes`, a compiled layer, a model's block: the runner then runs it and records
    any `oom`)."""
    if is_baseline(name) or (name in footprint.MODELS and not point.model):
        return footprint.predicted_bytes(name, call)
    if point.model:  # a model's block: only transformers' batched_mm has a footprint worth predicting
        name = MODEL_FOOTPRINTS.get(name)
        if name is None:
            return None
    dtype = getattr(torch, point.dtype)
    return moe_impls.resolve(name).predicted_bytes(point.moe_config(), point.tokens, dtype, point.mode)


def baseline_width(name: str, call: footprint.Call) -> int:
    """A dense baseline's d_ff at the call's shape (E F param-matched, k F FLOP-matched)."""
    return footprint.DENSE_WIDTH[name](call)


def baseline_weight_bytes(name: str, call: footprint.Call) -> int:
    """Bytes of a dense baseline's two projections at the call's shape."""
    d_ff = baseline_width(name, call)
    return (call.width(d_ff) + d_ff) * call.d_model * call.elem_bytes


def too_big(predicted: int | None, free: int | None, where: str) -> str | None:
    """The skip reason when a call predicted at `predicted` bytes would not fit in `free` bytes, else None."""
    if predicted is None or free is None or predicted <= MEMORY_HEADROOM * free:
        return None
    return f"predicted {predicted / 1e9:.3g} GB per call > {MEMORY_HEADROOM:.0%} of the {free / 1e9:.3g} GB {where}"


@dataclass(frozen=True)
class Baseline:
    """A dense baseline's resident weights and the bytes its call allocates beyond them."""

    weight_bytes: int
    call_bytes: int


def decide(free: int | None, impls: dict[str, int | None], baselines: dict[str, Baseline], where: str) -> dict:
    """Every row's skip reason (None: attempted), from `free`: the bytes free with the implementations' weights
    resident and no baseline built. `impls`: each implementation's predicted call bytes (None: not predicted)."""
    skips: dict[str, str | None] = {name: too_big(b, free, where) for name, b in impls.items()}
    fitting = [(b, name) for name, b in impls.items() if b is not None and skips[name] is None]
    largest = max(fitting, default=None)
    held = 0
    for name, b in baselines.items():
        left = None if free is None else free - held - b.weight_bytes
        skips[name] = too_big(b.call_bytes, left, f"{where} after its own {b.weight_bytes / 1e9:.3g} GB of weights")
        if skips[name] is None and largest is not None and too_big(largest[0], left, where):
            skips[name] = (
                f"its weights ({b.weight_bytes / 1e9:.3g} GB) would leave too little of the "
                f"{(free - held) / 1e9:.3g} GB {where} for {largest[1]}'s call ({largest[0] / 1e9:.3g} GB)"
            )
        if skips[name] is None:
            held += b.weight_bytes
    return skips
