"""The one set of weights every implementation runs on, in the transformers v5 layout.

Shapes (E experts, D d_model, F d_ff):
    router.weight            [E, D]
    experts.gate_up_proj     [E, 2F, D]   SwiGLU: gate rows first, then up rows
    experts.up_proj          [E, F, D]    GELU
    experts.down_proj        [E, D, F]
Building two implementations over one `MoEWeights` gives modules that share these parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from moe_impls.config import MoEConfig
from moe_impls.experts import activate


def plain_children(module: nn.Module) -> None:
    """Makes each registered submodule an ordinary attribute too, found without nn.Module.__getattr__ (about
    0.5 µs a hop after a failed ordinary lookup; a decode call is ~100 µs and makes a dozen). Registration is
    unchanged (parameters(), state_dict, .to); nn.Module.__setattr__ drops the copy if the name is reassigned."""
    module.__dict__.update(module._modules)


class RouterWeights(nn.Module):
    """Router projection, plus the noise projection (noisy top-k) or selection bias (sigmoid top-k)."""

    def __init__(self, cfg: MoEConfig, device: torch.device | str | None, dtype: torch.dtype) -> None:
        super().__init__()
        E, D = cfg.num_experts, cfg.d_model
        self.weight = nn.Parameter(torch.empty(E, D, device=device, dtype=dtype))
        self.noise_weight = (
            nn.Parameter(torch.empty(E, D, device=device, dtype=dtype)) if cfg.router == "noisy_topk" else None
        )
        # DeepSeek-V3's name; updated by a balancing rule, never by gradients, so it is a buffer.
        bias = torch.zeros(E, device=device, dtype=torch.float32) if cfg.router == "sigmoid_topk" else None
        self.register_buffer("e_score_correction_bias", bias)


class ExpertWeights(nn.Module):
    """Stacked expert FFN weights, and the math between them: what every implementation's experts compute
    (`w_in_EHD`, `w_out_EDF`, optional biases, `activate`, `finish`). transformers' experts modules offer the
    same through moe_impls/hf_experts.py, so one implementation runs on either."""

    def __init__(self, cfg: MoEConfig, device: torch.device | str | None, dtype: torch.dtype) -> None:
        super().__init__()
        E, D, F = cfg.num_experts, cfg.d_model, cfg.d_ff
        self.activation = cfg.activation
        w_in = nn.Parameter(torch.empty(E, cfg.expert_in_features, D, device=device, dtype=dtype))
        if cfg.activation == "swiglu":
            self.gate_up_proj = w_in
        else:
            self.up_proj = w_in
        self.down_proj = nn.Parameter(torch.empty(E, D, F, device=device, dtype=dtype))

    # Read from `_parameters`, where nn.Module.__getattr__ finds them, without its failed ordinary lookup first:
    # see plain_children. Parameters are never held elsewhere: one may be reassigned (load_state_dict(assign=True)).
    @property
    def w_in_EHD(self) -> torch.Tensor:
        """First projection, H = 2F (SwiGLU) or F (GELU)."""
        return self._parameters["gate_up_proj" if self.activation == "swiglu" else "up_proj"]

    @property
    def w_out_EDF(self) -> torch.Tensor:
        return self._parameters["down_proj"]

    bias_in_EH = bias_out_ED = None  # our experts have no biases (a transformers model's may: moe_impls/hf_experts.py)

    def activate(self, h_NH: torch.Tensor) -> torch.Tensor:
        """[N, H] -> [N, F]: SwiGLU or GELU."""
        return activate(h_NH, self.activation)

    def finish(self, out_ND: torch.Tensor) -> torch.Tensor:
        """What follows the second projection of every row, before its routing weight: nothing here."""
        return out_ND


class MoEWeights(nn.Module):
    """Router and experts of one layer; pass the same instance to every implementation under comparison."""

    def __init__(
        self,
        cfg: MoEConfig,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        seed: int | None = 0,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.router = RouterWeights(cfg, device, dtype)
        self.experts = ExpertWeights(cfg, device, dtype)
        plain_children(self)
        if seed is not None:
            self.reset_parameters(seed)

    @property
    def dtype(self) -> torch.dtype:
        return self.experts.down_proj.dtype

    @property
    def device(self) -> torch.device:
        return self.experts.down_proj.device

    @torch.no_grad()
    def reset_parameters(self, seed: int) -> None:
        """Seeded normal init, std 1/sqrt(fan_in), drawn in place by the weights' own device: no host draw, no
        fp32 staging copy and no transfer, so a GPU fills a large layer itself instead of one CPU core drawing
        it. A seed gives the same weights on every device of one type; CPU and CUDA generators differ."""
        gen = torch.Generator(device=self.device).manual_seed(seed)
        for p in self.parameters():
            p.normal_(0.0, p.shape[-1] ** -0.5, generator=gen)

    def expert_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.experts.parameters())

    def nbytes(self) -> int:
        """Bytes of all parameters and buffers: what must be resident to run the layer."""
        tensors = list(self.parameters()) + list(self.buffers())
        return sum(t.numel() * t.element_size() for t in tensors)
