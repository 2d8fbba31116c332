"""The layer's own Python on the decode path: a one-token call is ~100 µs on CPU, so each nn.Module.__getattr__
hop (about 0.5 µs, after a failed ordinary lookup) is a measurable share of it."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import moe_impls
from moe_impls import MoEConfig, MoEWeights
from moe_impls.experts import batched_linear

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


class _Copies(TorchDispatchMode):
    """Counts the copy kernels a backward dispatches (AccumulateGrad's restriding copy is one)."""

    def __init__(self) -> None:
        super().__init__()
        self.copies = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.copies += func.overloadpacket in (torch.ops.aten.copy_, torch.ops.aten.clone, torch.ops.aten._to_copy)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", ["loop", "padded", "sort_group", "dense_all"])
def test_a_backward_writes_each_weight_grad_in_the_parameters_layout(name):
    """A weight grad in another layout is copied into the parameter's by AccumulateGrad: at 16 tokens that copy
    was half of padded's training step on CPU."""
    layer, x = moe_impls.get(name)(MoEWeights(CFG)), torch.randn(16, CFG.d_model, requires_grad=True)
    out = layer(x)
    y = out[0] if isinstance(out, tuple) else out
    with _Copies() as counted:
        y.square().sum().backward()
    assert counted.copies == 0


def test_batched_linear_has_bmms_gradients():
    """Its hand-written backward against autograd's numerical derivative, for x, w and both together."""
    x = torch.randn(3, 5, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 6, 4, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(batched_linear(x, w), torch.bmm(x, w.mT))
    assert torch.autograd.gradcheck(batched_linear, (x, w))
    assert torch.autograd.gradcheck(batched_linear, (x.detach(), w))
