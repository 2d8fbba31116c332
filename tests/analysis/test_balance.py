"""The load-balance columns of one routing, checked by hand on 4 tokens, 3 experts, top-1."""

import math

import pytest
import torch

from analysis.balance import balance_columns, experts_touched
from moe_impls import LayerRecord


def record(expert_idx_N: list[int], computed_rows: int | None, num_dropped: int = 0) -> LayerRecord:
    """Tokens 0..N-1 each sent to one expert with weight 1; uniform router probabilities over 3 experts."""
    n = len(expert_idx_N)
    experts = torch.tensor(expert_idx_N)
    return LayerRecord(
        num_experts=3,
        kept=(torch.arange(n), experts, torch.ones(n)),
        dropped=torch.tensor(num_dropped),
        logits_TE=torch.zeros(4, 3),
        computed_probs_TE=torch.full((4, 3), 1 / 3),
        computed_rows=computed_rows,
    )


def test_columns_by_hand():
    cols = balance_columns(record([0, 0, 0, 1], computed_rows=6, num_dropped=0))
    # loads [3, 1, 0]: mean 4/3, population std sqrt(14/9), CV = sqrt(14)/4
    assert cols["tokens_per_expert"] == [3, 1, 0]
    assert cols["load_cv"] == pytest.approx(math.sqrt(14) / 4, rel=1e-6)
    assert cols["load_max_over_mean"] == pytest.approx(9 / 4)
    assert cols["importance_cv2"] == pytest.approx(14 / 16, rel=1e-6)  # gates sum per expert = the loads
    assert cols["routing_entropy"] == pytest.approx(math.log(3), rel=1e-6)
    assert cols["dropped_fraction"] == 0.0
    assert cols["computed_rows"] == 6 and cols["padded_fraction"] == pytest.approx(1 - 4 / 6)
    assert experts_touched(record([0, 0, 0, 1], computed_rows=6)) == 2


def test_dropped_and_unknown_rows():
    cols = balance_columns(record([2, 2, 2], computed_rows=None, num_dropped=1))
    assert cols["dropped_fraction"] == pytest.approx(1 / 4)
    assert cols["computed_rows"] is None and cols["padded_fraction"] is None
