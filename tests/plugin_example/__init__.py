"""A third-party MoE implementation as a user would write one: the plug-in tests load it both ways.

`make_layer` follows the protocol in moe_impls/plugins.py: factory(cfg, weights) -> nn.Module whose forward
returns the output alone (no routing record). The `broken_*` factories fail the reference check in the ways a
plug-in can; `tests.plugin_example.import_error` fails to import at all.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from moe_impls import MoEConfig, MoEWeights


class DenseGateMoE(nn.Module):
    """Every expert on every token, weighted by the top-k gates: simple, slow and right."""

    def __init__(self, cfg: MoEConfig, weights: MoEWeights) -> None:
        super().__init__()
        self.cfg, self.weights = cfg, weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg, w = self.cfg, self.weights
        x_TD = x.reshape(-1, cfg.d_model)
        probs_TE = torch.softmax(F.linear(x_TD, w.router.weight).float(), dim=-1)
        top_TK, idx_TK = torch.topk(probs_TE, cfg.top_k, dim=-1)
        if cfg.normalize_topk:
            top_TK = top_TK / top_TK.sum(-1, keepdim=True)
        gates_TE = torch.zeros_like(probs_TE).scatter(1, idx_TK, top_TK)
        gate, up = torch.matmul(x_TD, w.experts.gate_up_proj.transpose(1, 2)).chunk(2, dim=-1)
        out_ETD = torch.matmul(F.silu(gate) * up, w.experts.down_proj.transpose(1, 2))
        return torch.einsum("etd,te->td", out_ETD.float(), gates_TE).to(x.dtype).view(x.shape)


def make_layer(cfg: MoEConfig, weights: MoEWeights) -> nn.Module:
    return DenseGateMoE(cfg, weights)


class _Scaled(DenseGateMoE):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 1.05


class _Truncated(DenseGateMoE):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)[..., :-1]


def broken_values(cfg: MoEConfig, weights: MoEWeights) -> nn.Module:
    return _Scaled(cfg, weights)


def broken_shape(cfg: MoEConfig, weights: MoEWeights) -> nn.Module:
    return _Truncated(cfg, weights)


def not_a_module(cfg: MoEConfig, weights: MoEWeights) -> object:
    return object()
