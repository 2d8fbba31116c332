"""moe_impls/dispatch.py: the dispatch metadata and the one combine every built-in implementation goes through."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import moe_impls
from moe_impls import LayerRecord, MoEConfig, MoEWeights, RoutingRecord
from moe_impls.dispatch import Dispatch, combine, sort_by_expert

CFG = MoEConfig(d_model=16, d_ff=32, num_experts=8, top_k=2)
BUILTINS = ("loop", "sort_group", "padded", "dense_all")


def routed(cfg: MoEConfig = CFG, tokens: int = 40) -> tuple[torch.Tensor, RoutingRecord]:
    weights = MoEWeights(cfg, seed=0)
    x_TD = torch.randn(tokens, cfg.d_model, generator=torch.Generator().manual_seed(1))
    return x_TD, moe_impls.Router(cfg)(weights, x_TD, training=False)


def test_sort_by_expert_is_torch_sort_stable_and_keeps_each_rows_weight():
    x_TD, routing = routed()
    dispatch = sort_by_expert(x_TD, routing)
    order_N = torch.sort(routing.expert_idx_N, stable=True).indices
    assert torch.equal(dispatch.token_idx_N, routing.token_idx_N[order_N])
    assert torch.equal(dispatch.weight_N1, routing.weight_N[order_N].unsqueeze(-1))
    assert dispatch.offsets_E.dtype == torch.int32
    assert torch.equal(dispatch.offsets_E, torch.cumsum(routing.tokens_per_expert_E, 0).int())
    assert dispatch.num_tokens == 40 and dispatch.computed_rows == 80


def test_combine_is_the_weighted_scatter_add_in_fp32():
    token_idx_N = torch.tensor([2, 0, 2, 1, 0])
    weight_N = torch.tensor([0.5, 0.25, 0.5, 1.0, 0.75])
    out_ND = torch.arange(10, dtype=torch.bfloat16).view(5, 2)
    dispatch = Dispatch(num_tokens=4, token_idx_N=token_idx_N, weight_N1=weight_N[:, None], computed_rows=5)
    y_TD = combine(out_ND, dispatch)
    expected = torch.zeros(4, 2).scatter_add_(0, token_idx_N[:, None].expand(5, 2), out_ND.float() * weight_N[:, None])
    assert y_TD.dtype == torch.float32 and torch.equal(y_TD, expected)
    assert torch.equal(y_TD[3], torch.zeros(2))  # a token no row went back to


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_without_autograd_the_sorted_dispatch_combines_by_bags_to_the_same_result(dtype):
    """Inference gets each token's rows as one weighted gather-sum (embedding_bag); it must equal the scatter-add
    of weighted rows that a train step still uses, in fp32, for every token, including those of a shared expert."""
    x_TD, routing = routed(tokens=40)
    out_ND = torch.randn(80, CFG.d_model, generator=torch.Generator().manual_seed(2)).to(dtype)
    scattered = sort_by_expert(x_TD, routing)
    with torch.no_grad():
        bagged = sort_by_expert(x_TD, routing)
        y_TD = combine(out_ND, bagged)
    assert scattered.bags is None and scattered.weight_N1 is not None
    assert bagged.bags is not None and bagged.weight_N1 is None
    assert torch.equal(bagged.token_idx_N, scattered.token_idx_N)
    order_N = torch.sort(routing.expert_idx_N, stable=True).indices
    assert torch.equal(order_N[bagged.bags.rows_N], torch.arange(80))  # assignment n's output is row rows_N[n]
    assert y_TD.dtype == torch.float32
    torch.testing.assert_close(y_TD, combine(out_ND, scattered), rtol=1e-6, atol=1e-6)


def test_capacity_drops_keep_the_scatter_add_without_autograd():
    """Bags need every token's K rows; once capacity dropped some, rows per token vary and the scatter-add stays."""
    x_TD, routing = routed(dataclasses.replace(CFG, capacity_factor=0.5))
    assert routing.kept is not None and routing.kept_top_k is None
    with torch.no_grad():
        assert sort_by_expert(x_TD, routing).bags is None


def test_no_token_no_bag():
    x_TD, routing = routed(tokens=0)
    with torch.no_grad():
        y_TD = combine(torch.empty(0, CFG.d_model), sort_by_expert(x_TD, routing))
    assert y_TD.shape == (0, CFG.d_model)


def test_dispatch_metadata_is_frozen():
    x_TD, routing = routed()
    with pytest.raises(dataclasses.FrozenInstanceError):
        sort_by_expert(x_TD, routing).computed_rows = 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        routing.weight_N = routing.weight_N * 2


@pytest.mark.parametrize("name", BUILTINS)
def test_every_builtin_goes_through_the_one_combine_once(name, monkeypatch):
    calls = []

    def counted(out_ND, dispatch):
        calls.append(dispatch)
        return combine(out_ND, dispatch)

    monkeypatch.setattr(moe_impls.layer, "combine", counted)
    x_TD, _ = routed()
    moe_impls.get(name)(MoEWeights(CFG, seed=0))(x_TD)
    assert len(calls) == 1 and isinstance(calls[0], Dispatch)


@pytest.mark.parametrize(
    ("name", "rows"),
    [("loop", lambda r: 80), ("sort_group", lambda r: 80), ("dense_all", lambda r: 8 * 40)]
    + [("padded", lambda r: 8 * int(r.tokens_per_expert_E.max()))],
)
def test_computed_rows_come_back_with_the_output_and_the_routers_record_has_none(name, rows):
    x_TD, routing = routed()
    assert not hasattr(routing, "computed_rows")  # the router's own record says nothing of the experts' work
    _, record = moe_impls.get(name)(MoEWeights(CFG, seed=0))(x_TD)
    assert isinstance(record, LayerRecord) and record.computed_rows == rows(record)
    assert torch.equal(record.expert_idx_N, routing.expert_idx_N)  # the rest is the router's record, unchanged
