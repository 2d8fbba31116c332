"""The two ways a row's layer is called: once to check it (its output, input gradient and routing kept), and
as the call the timers repeat (nothing kept, a reset between calls)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from moe_impls import RoutingRecord


def check_call(layer: nn.Module, x, grad_out, mode: str):
    """One call outside any timing: the output, the input gradient in train mode, and the routing record."""
    if mode == "forward":
        with torch.no_grad():
            out, routing = _split(layer(x))
        return out, None, routing
    x = x.detach().requires_grad_()
    out, routing = _split(layer(x))
    out.backward(grad_out)
    layer.zero_grad(set_to_none=True)
    return out.detach(), x.grad, routing


def call_for_timing(module: nn.Module, x, grad_out, mode: str) -> tuple[Callable[[], object], Callable[[], None]]:
    """The call that is timed, and the reset run after each call outside the timed region (train mode drops
    the gradients there, so none stays resident while the point's other rows run)."""
    if mode == "forward":

        def forward():
            with torch.no_grad():
                return module(x)

        return forward, lambda: None
    x_req = x.detach().requires_grad_()

    def train_step():
        out, _ = _split(module(x_req))
        out.backward(grad_out)

    def clear_grads():
        module.zero_grad(set_to_none=True)
        x_req.grad = None

    return train_step, clear_grads


def _split(result) -> tuple[torch.Tensor, RoutingRecord | None]:
    return result if isinstance(result, tuple) else (result, None)
