"""moe_impls/views.py: a kept view saves its op only while it is still a view of the very tensor asked for."""

from __future__ import annotations

import torch
from torch import nn

import moe_impls
from moe_impls import MoEConfig, MoEWeights
from moe_impls.views import KeptViews
from suites.counters import count


def test_a_view_is_kept_while_autograd_is_off_and_made_anew_with_it_on():
    w, views = nn.Parameter(torch.randn(3, 4, 5)), KeptViews()
    with torch.no_grad():
        kept = views.transposed("w", w)
        assert kept.shape == (3, 5, 4) and views.transposed("w", w) is kept
        assert count(lambda: views.transposed("w", w)).aten_ops == 0
    made = views.transposed("w", w)
    assert made is not kept and made.requires_grad  # its backward belongs to this call's graph
    made.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


def test_a_view_of_a_shard_is_kept_too():
    """A weight that is itself a view (one rank's experts, sliced from the full set) keeps its transposed view."""
    full, views = torch.randn(8, 4, 5), KeptViews()
    shard = full[2:4]
    with torch.no_grad():
        kept = views.transposed("w", shard)
        assert views.transposed("w", shard) is kept and torch.equal(kept, shard.transpose(-2, -1))
        assert views.transposed("w", full[2:4]) is not kept  # another tensor, though the same memory


def test_a_parameter_moved_or_reassigned_gets_a_new_view():
    layer, views = nn.Linear(4, 3, bias=False), KeptViews()
    with torch.no_grad():
        first = views.transposed("w", layer.weight)
        layer.weight.data = torch.randn(3, 4)  # what .to(dtype) and .to(device) do
        moved = views.transposed("w", layer.weight)
        assert moved is not first and torch.equal(moved, layer.weight.t())
        layer.weight = nn.Parameter(torch.randn(3, 4))  # load_state_dict(assign=True)
        assert torch.equal(views.transposed("w", layer.weight), layer.weight.t())


def test_a_layer_reads_weights_changed_in_place_and_reloaded_between_inference_calls():
    """The decode path keeps views of the router's and the experts' weights: an optimiser step (in place) or a
    reload (new tensors) between two inference calls must show in the second, as in a layer that keeps nothing."""
    cfg = MoEConfig(d_model=16, d_ff=32, num_experts=4, top_k=2)
    weights, x = MoEWeights(cfg, seed=0), torch.randn(3, 16)
    layer = moe_impls.get("sort_group")(weights)

    def fresh_layer_output() -> torch.Tensor:
        copy = MoEWeights(cfg, seed=None)
        copy.load_state_dict(weights.state_dict())
        return moe_impls.get("sort_group")(copy)(x)[0]

    with torch.no_grad():
        before = layer(x)[0]
        for p in weights.parameters():
            p.mul_(-1.5)
        stepped = layer(x)[0]
        assert not torch.equal(stepped, before) and torch.equal(stepped, fresh_layer_output())
        weights.load_state_dict(MoEWeights(cfg, seed=1).state_dict(), assign=True)
        reloaded = layer(x)[0]
        assert not torch.equal(reloaded, stepped) and torch.equal(reloaded, fresh_layer_output())
