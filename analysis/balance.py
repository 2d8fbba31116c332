"""Load-balance statistics of one layer's routing, as plain numbers for a result row.

Pure math over the record a layer returns; the instrument adds them to every checked row and the collapse
experiment to every training step, so the two report balance with the same columns.
"""

from __future__ import annotations

import torch

from moe_impls import LayerRecord
from moe_impls.losses import cv_squared


def balance_columns(routing: LayerRecord) -> dict:
    """Tokens per expert, load CV and max/mean, dropped and padded fractions, importance CV^2, routing entropy."""
    load_E = routing.tokens_per_expert_E.float()
    assigned = int(load_E.sum())
    dropped = int(routing.num_dropped)
    mean = load_E.mean()
    probs = routing.probs_TE.detach()
    if probs.numel():
        # Normalised so that sigmoid scores read as a distribution too.
        dist = probs / probs.sum(-1, keepdim=True).clamp_min(1e-20)
        entropy = float(-(dist * dist.clamp_min(1e-20).log()).sum(-1).mean())
    else:
        entropy = None
    rows = routing.computed_rows
    return {
        "tokens_per_expert": routing.tokens_per_expert_E.tolist(),
        "load_cv": float(cv_squared(load_E).sqrt()) if assigned else None,
        "load_max_over_mean": float(load_E.max() / mean) if assigned else None,
        "dropped_fraction": dropped / (assigned + dropped) if assigned + dropped else 0.0,
        "importance_cv2": float(cv_squared(routing.gates_TE.detach().sum(0))) if assigned else None,
        "routing_entropy": entropy,
        "computed_rows": rows,
        "padded_fraction": 1 - assigned / rows if rows else None,
    }


def experts_touched(routing: LayerRecord) -> int:
    """Experts that received at least one assignment: the ones whose weights the forward reads."""
    return int(torch.count_nonzero(routing.tokens_per_expert_E))
