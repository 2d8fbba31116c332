"""Load-balance statistics of one routing record, as plain numbers for a result row."""

from __future__ import annotations

import torch

from moe_impls import RoutingRecord
from moe_impls.losses import cv_squared


def balance_columns(routing: RoutingRecord) -> dict:
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


def experts_touched(routing: RoutingRecord) -> int:
    return int(torch.count_nonzero(routing.tokens_per_expert_E))
