"""The layer's own Python on the decode path: a one-token call is ~100 µs on CPU, so each nn.Module.__getattr__
hop (about 0.5 µs, after a failed ordinary lookup) is a measurable share of it."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import moe_impls
from moe_impls import MoEConfig, MoEWeights

CFG = MoEConfig(d_model=32, d_ff=64, num_experts=4, top_k=2)


@pytest.mark.parametrize("name", ["loop", "padded", "sort_group", "dense_all"])
def test_a_forward_finds_its_weights_without_module_getattr(name, monkeypatch):
    layer, x = moe_impls.get(name)(MoEWeights(CFG)), torch.randn(1, CFG.d_model)
    layer(x)
    hops: list[str] = []
    slow = nn.Module.__getattr__

    def counted(module: nn.Module, attr: str):
        hops.append(f"{type(module).__name__}.{attr}")
        return slow(module, attr)

    monkeypatch.setattr(nn.Module, "__getattr__", counted)
    layer(x)
    assert hops == []


def test_plain_children_follow_reassignment_and_copies():
    """The plain attribute is the registered module; reassigning the name, or copying the layer, keeps them one."""
    layer = moe_impls.get("sort_group")(MoEWeights(CFG))
    assert layer.weights is layer._modules["weights"] and layer.experts is layer.weights._modules["experts"]
    clone = copy.deepcopy(layer)
    assert clone.weights is clone._modules["weights"] and clone.weights is not layer.weights
    other = MoEWeights(CFG, seed=1)
    layer.weights = other
    assert layer.weights is other and layer._modules["weights"] is other
    x = torch.randn(3, CFG.d_model)
    torch.testing.assert_close(layer(x)[0], moe_impls.get("sort_group")(other)(x)[0])
    assert {n for n, _ in layer.named_parameters()} == {n for n, _ in clone.named_parameters()}


def test_a_reassigned_parameter_is_the_one_the_forward_reads():
    """Parameters are read from the module at every call, never held: load_state_dict(assign=True) swaps them."""
    weights, other = MoEWeights(CFG), MoEWeights(CFG, seed=1)
    layer, x = moe_impls.get("sort_group")(weights), torch.randn(3, CFG.d_model)
    layer(x)
    weights.load_state_dict(other.state_dict(), assign=True)
    torch.testing.assert_close(layer(x)[0], moe_impls.get("sort_group")(other)(x)[0])
