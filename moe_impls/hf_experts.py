"""Our implementations as transformers experts implementations: `moe_bench_loop`, `moe_bench_padded` and
`moe_bench_sort_group`, beside transformers' own `eager`, `batched_mm` and `grouped_mm`.

transformers v5 runs a model's experts through `ExpertsInterface` (transformers.integrations.moe): a function
`(experts_module, hidden_states [T, D], top_k_index [T, K], top_k_weights [T, K]) -> [T, D]`, chosen by
`config._experts_implementation`. `register()` adds ours. Each runs the very dispatch and expert code of our
layer (moe_impls/loop.py, padded.py, sort_group.py) over a view of the module's weights (`HFExperts`), and
honours what `use_experts_implementation` declared for the module:
    has_gate          gate_up_proj and the module's own `_apply_gate` (which also reads the interleaved
                      layout of `is_concatenated = False`), else up_proj and `act_fn`
    is_transposed     weights stored [E, in, out]: viewed as [E, out, in], never copied
    has_bias          the projections' biases, per expert
    has_post_expert_norm  the module's `post_expert_norm` on every expert output row
Expert-parallel sentinels (`_is_expert_parallel`) are refused with one line.
"""

from __future__ import annotations

import torch
from torch import nn

from moe_impls.config import MoEConfig
from moe_impls.layer import MoELayer
from moe_impls.registry import get
from moe_impls.routing import Assignments
from moe_impls.weights import MoEWeights

IMPLS = ("loop", "padded", "sort_group")
PREFIX = "moe_bench_"


class HFExperts:
    """A transformers experts module seen as our experts (moe_impls/weights.py ExpertWeights): the weights in
    [E, out, in] layout, optional biases, the module's gate or activation, its post-expert norm. The views are
    taken at each call: holding one would keep a graph node on the module (and break its deepcopy)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self._first = "gate_up_proj" if module.has_gate else "up_proj"

    @property
    def w_in_EHD(self) -> torch.Tensor:
        return _out_in(getattr(self.module, self._first), self.module.is_transposed)

    @property
    def w_out_EDF(self) -> torch.Tensor:
        return _out_in(self.module.down_proj, self.module.is_transposed)

    @property
    def bias_in_EH(self) -> torch.Tensor | None:
        return getattr(self.module, f"{self._first}_bias") if self.module.has_bias else None

    @property
    def bias_out_ED(self) -> torch.Tensor | None:
        return self.module.down_proj_bias if self.module.has_bias else None

    def activate(self, h_NH: torch.Tensor) -> torch.Tensor:
        return self.module._apply_gate(h_NH) if self.module.has_gate else self.module.act_fn(h_NH)

    def finish(self, out_ND: torch.Tensor) -> torch.Tensor:
        return self.module.post_expert_norm(out_ND) if self.module.has_post_expert_norm else out_ND


def _out_in(w: torch.Tensor, transposed: bool) -> torch.Tensor:
    return w.transpose(1, 2) if transposed else w


class _OnModule(MoELayer):
    """Mixed into an implementation's class: its `experts` are a transformers module's (`HFExperts`)."""

    view: HFExperts

    @property
    def experts(self) -> HFExperts:
        return self.view


def _layer(module: nn.Module, impl: str, top_k: int) -> MoELayer:
    """Our `impl` layer over `module`'s weights, built once per (module, impl, K) and kept on the module (not as
    a submodule: it holds no parameters of its own)."""
    view = HFExperts(module)  # the module's parameters as they are now
    kept = module.__dict__.setdefault("_moe_bench_layers", {})
    if (impl, top_k) not in kept:
        (E, _, D), F = view.w_in_EHD.shape, view.w_out_EDF.shape[-1]
        activation = "swiglu" if module.has_gate else "gelu"  # a label only: `view.activate` is the module's
        cfg = MoEConfig(d_model=D, d_ff=F, num_experts=E, top_k=top_k, activation=activation)
        cls = type(f"HF{get(impl).__name__}", (_OnModule, get(impl)), {})
        kept[impl, top_k] = cls(MoEWeights(cfg, device="meta", seed=None))  # unallocated: the module's serve
    layer = kept[impl, top_k]
    layer.view = view
    return layer


def experts_forward(impl: str):
    """The ExpertsInterface function running our `impl`."""

    def forward(
        module: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        if getattr(module, "_is_expert_parallel", False):
            raise ValueError(
                f"{PREFIX}{impl}: transformers' expert-parallel sentinels (_is_expert_parallel) are not supported"
            )
        layer = _layer(module, impl, top_k_index.shape[-1])
        routing = Assignments.from_top_k(top_k_index, top_k_weights, layer.cfg.num_experts)
        y_TD, _ = layer.compute_experts(hidden_states, routing)
        return y_TD.to(hidden_states.dtype)

    forward.__name__ = f"{PREFIX}{impl}_experts_forward"
    return forward


def register() -> tuple[str, ...]:
    """Adds ours to transformers' ExpertsInterface (idempotent); returns their names."""
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    for impl in IMPLS:
        ALL_EXPERTS_FUNCTIONS.register(f"{PREFIX}{impl}", experts_forward(impl))
    return tuple(f"{PREFIX}{impl}" for impl in IMPLS)
