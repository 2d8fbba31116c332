"""Which experts implementation a block's experts run under, and one run of the block under it.

transformers v5 routes the experts of its MoE models through `transformers.integrations.moe`: the decorator
`use_experts_implementation` wraps an `*Experts` class's forward so that every call looks up
`config._experts_implementation` ('eager' = the class's own forward, 'grouped_mm', 'batched_mm', kernels such as
'sonicmoe', and our `moe_bench_*`, moe_impls/hf_experts.py) in `ALL_EXPERTS_FUNCTIONS`; only the experts' call
differs. transformers is imported inside the functions, never at module import. Shapes: T tokens, D the block's
hidden size.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
from collections.abc import Iterator

import torch
from torch import nn

from moe_impls.hf_models.blocks import block_forward
from moe_impls.hf_models.modeling import DECORATOR, is_experts_class

OURS = "moe_bench_"


def experts_modules(block: nn.Module) -> Iterator[nn.Module]:
    """The experts modules of `block` that dispatch through transformers' experts interface."""
    return (m for m in block.modules() if is_experts_class(type(m)))


def set_experts_implementation(block: nn.Module, name: str) -> None:
    """Subsequent forwards of `block` run its experts with `name`: set on the config each experts module reads
    (`experts.config`; shared by every block built from that very object, which build_block never does)."""
    known = implementation_names()
    if name not in known:
        raise ValueError(f"experts implementation {name!r} is not registered; known: {', '.join(known)}")
    experts = list(experts_modules(block))
    if not experts:
        raise ValueError(f"{type(block).__name__} has no experts module using {DECORATOR}")
    for module in experts:
        module.config._experts_implementation = name


def register_ours() -> tuple[str, ...]:
    """Our `moe_bench_*` experts implementations registered with transformers, where moe_impls/hf_experts.py
    exists (its `register()`); () otherwise."""
    if importlib.util.find_spec("moe_impls.hf_experts") is None:
        return ()
    return tuple(importlib.import_module("moe_impls.hf_experts").register())


def implementation_names() -> list[str]:
    """'eager' and every name registered in ALL_EXPERTS_FUNCTIONS, in registration order."""
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    return ["eager", *(k for k in ALL_EXPERTS_FUNCTIONS.valid_keys() if k != "eager")]


def needs_gpu_kernel(name: str) -> str | None:
    """Why `name` is not run on a CPU, or None. transformers' kernel integrations (sonicmoe, deepgemm) live in
    their own `transformers.integrations.*` module and load CUDA kernels from the Hub; the portable ones live in
    `transformers.integrations.moe`, ours in moe_impls."""
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    if name == "eager":
        return None
    where = getattr(ALL_EXPERTS_FUNCTIONS[name], "__module__", "") or ""
    if where.startswith("transformers.integrations.") and where != "transformers.integrations.moe":
        return f"CUDA kernels, {where}"
    return None


@dataclasses.dataclass(frozen=True)
class BlockRun:
    """One forward (and backward, given an output gradient) of a block: y [T, D], the input gradient [T, D] and
    each parameter's gradient by name (None where a parameter got none, e.g. a router bias used without grad)."""

    y_TD: torch.Tensor
    grad_x_TD: torch.Tensor | None
    grads: dict[str, torch.Tensor | None]


def run_block(block: nn.Module, x_TD: torch.Tensor, implementation: str, grad_y_TD: torch.Tensor | None = None):
    """`block` on x_TD with its experts under `implementation`; backpropagates grad_y_TD when given."""
    set_experts_implementation(block, implementation)
    block.zero_grad(set_to_none=True)
    x_TD = x_TD.detach().requires_grad_(grad_y_TD is not None)
    with torch.set_grad_enabled(grad_y_TD is not None):
        y_TD = block_forward(block, x_TD)
        if grad_y_TD is not None:
            y_TD.backward(grad_y_TD)
    grads = {name: None if p.grad is None else p.grad.detach().clone() for name, p in block.named_parameters()}
    return BlockRun(y_TD.detach(), x_TD.grad, grads if grad_y_TD is not None else {})
