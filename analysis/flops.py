"""Analytic work per call: FLOPs and the least bytes a call must move.

FLOPs count the matmuls only (2 per multiply-add): the router (2 T D E) and, per expert assignment that was
kept, the first projection (2 D H, H = 2F for SwiGLU, F for GELU) and the down projection (2 F D).
Activation, softmax and combine are elementwise and left out. Padding rows and dense_all's idle rows
are not counted, so an implementation that computes wasted rows shows a lower achieved rate.
Training counts forward x 3 (backward is two matmuls per forward matmul).
"""

from __future__ import annotations

from moe_impls import MoEConfig

TRAIN_FACTOR = 3


def ffn_flops_per_row(d_model: int, d_ff: int, activation: str) -> int:
    """One token through one FFN (an expert or a dense layer): 2 D H for the first projection + 2 F D for the down."""
    width = 2 * d_ff if activation == "swiglu" else d_ff
    return 2 * d_model * width + 2 * d_ff * d_model


def expert_flops_per_assignment(cfg: MoEConfig) -> int:
    return ffn_flops_per_row(cfg.d_model, cfg.d_ff, cfg.activation)


def moe_flops(cfg: MoEConfig, tokens: int, assignments: int, mode: str) -> int:
    router = 2 * tokens * cfg.d_model * cfg.num_experts
    total = router + assignments * expert_flops_per_assignment(cfg)
    return total * (TRAIN_FACTOR if mode == "train" else 1)


def dense_flops(d_model: int, d_ff: int, activation: str, tokens: int, mode: str) -> int:
    return tokens * ffn_flops_per_row(d_model, d_ff, activation) * (TRAIN_FACTOR if mode == "train" else 1)


def min_bytes(weight_bytes_touched: int, tokens: int, d_model: int, element_size: int, mode: str) -> int:
    """Weights of the experts actually hit, plus reading the input and writing the output once.

    Training reads the weights again for each of the two backward matmuls: 3x the forward bytes.
    """
    forward = weight_bytes_touched + 2 * tokens * d_model * element_size
    return forward * (TRAIN_FACTOR if mode == "train" else 1)
