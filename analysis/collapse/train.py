"""One arm of the collapse experiment: the clustered regression task, the model around a real MoE layer, and the
training loop that records each step's routing as a tidy row.

Legend: T tokens per step, E experts, K top_k, D d_model, C clusters, O d_out, I d_in.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import moe_impls
from analysis.balance import balance_columns
from analysis.collapse.settings import IMPL, CollapseConfig, Setting
from moe_impls import LayerRecord, MoEWeights, RoutingRecord

StepHook = Callable[[int, RoutingRecord], None]


class ClusterRegression:
    """C linear sub-tasks: x = offset + centre_c + s*z, y = A_c z. Seeded; sample() draws from a given generator."""

    def __init__(self, cfg: CollapseConfig) -> None:
        gen = torch.Generator().manual_seed(cfg.seed)
        offset = torch.randn(cfg.d_in, generator=gen)
        self.offset = offset / offset.norm() * cfg.input_offset
        self.centres_CI = torch.randn(cfg.clusters, cfg.d_in, generator=gen) * cfg.cluster_spread
        # unit-variance targets per row of A_c: each output is a sum of d_in terms of variance 1/d_in
        self.maps_COI = torch.randn(cfg.clusters, cfg.d_out, cfg.d_in, generator=gen) / math.sqrt(cfg.d_in)
        self.cfg = cfg

    def sample(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> x [n, d_in], y [n, d_out], cluster [n] int64."""
        cluster = torch.randint(self.cfg.clusters, (n,), generator=gen)
        z = torch.randn(n, self.cfg.d_in, generator=gen)
        x = self.offset + self.centres_CI[cluster] + self.cfg.within_cluster_std * z
        y = torch.einsum("noi,ni->no", self.maps_COI[cluster], z)
        return x, y, cluster


class CollapseNet(nn.Module):
    """embed -> the project's MoE layer (residual) -> linear head. The MoE block is a real `moe_impls` layer."""

    def __init__(self, cfg: CollapseConfig, router: str) -> None:
        super().__init__()
        torch.manual_seed(cfg.seed)  # embed and head: same draws in every setting
        self.embed = nn.Linear(cfg.d_in, cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.d_out)
        self.moe = moe_impls.get(IMPL)(build_weights(cfg, router))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, LayerRecord]:
        h = self.embed(x)
        m, routing = self.moe(h)
        return self.head(h + m), routing


@torch.no_grad()
def build_weights(cfg: CollapseConfig, router: str) -> MoEWeights:
    """MoEWeights whose router and expert weights are identical across router kinds for one seed.

    Noisy top-k draws an extra noise projection first, which would shift every later draw; copying from a
    softmax-router draw keeps the settings comparable. The router weight is then scaled by router_init_scale.
    """
    weights = MoEWeights(cfg.moe_config(router), seed=cfg.seed)
    if router != "softmax_topk":
        reference = MoEWeights(cfg.moe_config("softmax_topk"), seed=cfg.seed)
        weights.router.weight.copy_(reference.router.weight)
        weights.experts.load_state_dict(reference.experts.state_dict())
    weights.router.weight.mul_(cfg.router_init_scale)
    return weights


def dead_columns(tokens_per_expert_E: torch.Tensor) -> dict[str, float | int]:
    """Experts that received no assignment in this step's batch, as a count and a fraction of E."""
    dead = int((tokens_per_expert_E == 0).sum())
    return {"dead_experts": dead, "dead_fraction": dead / tokens_per_expert_E.numel()}


@torch.no_grad()
def update_selection_bias(bias_E: torch.Tensor, tokens_per_expert_E: torch.Tensor, gamma: float) -> None:
    """DeepSeek-V3 auxiliary-loss-free balancing, in place: bias_i += gamma * sign(mean_load - load_i).

    Overloaded experts become less likely to be selected, underloaded ones more; the bias never touches the
    gate weights, so it adds no gradient and no term to the loss.
    """
    load_E = tokens_per_expert_E.to(bias_E.dtype)
    bias_E.add_(gamma * torch.sign(load_E.mean() - load_E))


@dataclass(frozen=True)
class Arm:
    """What one setting trains: its recipe, the sizes, the model and its optimizer."""

    setting: Setting
    cfg: CollapseConfig
    model: CollapseNet
    optimizer: torch.optim.Optimizer


@dataclass(frozen=True)
class StepResult:
    """One optimizer step: its losses, the routing the layer decided, and the selection bias that routing used."""

    task_loss: float
    aux_loss: float
    routing: LayerRecord
    selection_bias: list[float] | None


def train_step(arm: Arm, x: torch.Tensor, y: torch.Tensor) -> StepResult:
    """Forward, task + auxiliary loss, one Adam step; the bias read here is the one this step routed with."""
    arm.model.train()
    prediction, routing = arm.model(x)
    task_loss = F.mse_loss(prediction, y)
    aux = arm.setting.aux(routing, arm.cfg) if arm.setting.aux is not None else task_loss.new_zeros(())
    arm.optimizer.zero_grad(set_to_none=True)
    (task_loss + aux).backward()
    arm.optimizer.step()
    bias = arm.model.moe.weights.router.e_score_correction_bias
    return StepResult(task_loss.item(), aux.item(), routing, bias.tolist() if bias is not None else None)


@torch.no_grad()
def held_out_loss(model: CollapseNet, x_eval: torch.Tensor, y_eval: torch.Tensor) -> float:
    """Task MSE on the held-out inputs, routed in eval mode (no router noise)."""
    model.eval()
    return float(F.mse_loss(model(x_eval)[0], y_eval))


def step_row(arm: Arm, step: int, result: StepResult, eval_loss: float | None) -> dict:
    """The tidy row of one step; its load columns are the benchmark's own (tokens_per_expert, load_cv, ...)."""
    return {
        "setting": arm.setting.name,
        "step": step,
        "task_loss": result.task_loss,
        "aux_loss": result.aux_loss,
        "eval_task_loss": eval_loss,
        "tokens": arm.cfg.tokens,
        "top_k": arm.cfg.top_k,
        **balance_columns(result.routing),
        **dead_columns(result.routing.tokens_per_expert_E),
        "selection_bias": result.selection_bias,
    }


def train_setting(
    setting: Setting, cfg: CollapseConfig, task: ClusterRegression, on_step: StepHook | None = None
) -> list[dict]:
    """Train one model under `setting`; return one tidy row per step. `on_step(step, routing)` sees each record."""
    model = CollapseNet(cfg, setting.router)
    arm = Arm(setting, cfg, model, torch.optim.Adam(model.parameters(), lr=cfg.lr))
    batches = torch.Generator().manual_seed(cfg.seed + 1)  # the same batches in every setting
    x_eval, y_eval, _ = task.sample(cfg.eval_tokens, torch.Generator().manual_seed(cfg.seed + 2))
    gamma = setting.gamma(cfg)
    rows = []
    for step in range(cfg.steps):
        x, y, _ = task.sample(cfg.tokens, batches)
        result = train_step(arm, x, y)
        if gamma is not None:
            update_selection_bias(
                model.moe.weights.router.e_score_correction_bias, result.routing.tokens_per_expert_E, gamma
            )
        if on_step is not None:
            on_step(step, result.routing)
        evaluate = (step + 1) % cfg.eval_every == 0 or step == cfg.steps - 1
        rows.append(step_row(arm, step, result, held_out_loss(model, x_eval, y_eval) if evaluate else None))
    return rows
