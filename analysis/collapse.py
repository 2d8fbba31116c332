"""Router collapse with and without balancing: one small MoE model trained under six settings from one seed.

The task is a mixture of C linear regression sub-tasks; an input's cluster decides which one applies, so
E = C experts can each specialise. The unbalanced router collapses onto a few experts because the inputs
share a large common offset (as real hidden states do): a router update along that shared direction raises
an expert's logit for every token at once, so the expert that wins early wins everywhere, trains faster and
keeps winning. A small router initialisation (near-uniform routing at the start) makes the winner come from
noise rather than from the initial weights. Everything is measured per step and written to
`collapse.jsonl` (one row per setting x step) and `collapse_meta.json`; `reports.collapse` renders them.

Legend: T tokens per step, E experts, K top_k, D d_model, C clusters.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import moe_impls
from moe_impls import MoEConfig, MoEWeights, RoutingRecord
from moe_impls.losses import importance_loss, load_loss, switch_loss, z_loss
from suites.balance import balance_columns

IMPL = "sort_group"


@dataclass(frozen=True)
class CollapseConfig:
    """Sizes and knobs of the experiment; the defaults finish in well under a minute on 2 CPU cores."""

    steps: int = field(default=2000, metadata={"help": "optimizer steps per setting"})
    seed: int = field(default=0, metadata={"help": "one seed for weights, data and router noise in every setting"})
    tokens: int = field(default=512, metadata={"help": "tokens (inputs) per step, T"})
    num_experts: int = field(default=16, metadata={"help": "E; equal to the clusters so each expert can own one"})
    top_k: int = 2
    clusters: int = field(default=16, metadata={"help": "C sub-tasks, one linear map each"})
    d_in: int = field(default=16, metadata={"help": "input features"})
    d_model: int = field(default=32, metadata={"help": "width of the embedding the router and experts see"})
    d_ff: int = field(default=32, metadata={"help": "hidden size of one SwiGLU expert"})
    d_out: int = field(default=4, metadata={"help": "regression targets per input"})
    input_offset: float = field(
        default=16.0, metadata={"help": "norm of the offset every input shares: the collapse trigger"}
    )
    cluster_spread: float = field(default=2.0, metadata={"help": "std of the cluster centres around the offset"})
    within_cluster_std: float = field(default=0.5, metadata={"help": "std of an input around its cluster centre"})
    router_init_scale: float = field(
        default=0.1, metadata={"help": "router weight init multiplier; small = near-uniform routing at step 0"}
    )
    lr: float = field(default=3e-3, metadata={"help": "Adam learning rate, every parameter"})
    importance_weight: float = field(default=0.1, metadata={"help": "Shazeer 2017 w_importance"})
    load_weight: float = field(default=0.1, metadata={"help": "Shazeer 2017 w_load (noisy setting)"})
    switch_alpha: float = field(default=0.01, metadata={"help": "Switch Transformer alpha"})
    z_weight: float = field(default=1e-3, metadata={"help": "ST-MoE router z-loss weight"})
    gamma: float = field(default=0.001, metadata={"help": "bias update speed of aux-loss-free balancing (DeepSeek-V3)"})
    fast_gamma_factor: float = field(default=10.0, metadata={"help": "the bias-fast setting uses gamma times this"})
    eval_every: int = field(default=50, metadata={"help": "steps between held-out evaluations (and the last step)"})
    eval_tokens: int = field(default=2048, metadata={"help": "held-out inputs, routed in eval mode (no noise)"})

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and f.name != "seed" and value <= 0:
                raise ValueError(f"CollapseConfig.{f.name} must be a positive integer, got {value!r}")
            if f.type == "float" and not value >= 0:
                raise ValueError(f"CollapseConfig.{f.name} must be >= 0, got {value!r}")
        if self.top_k > self.num_experts:
            raise ValueError(f"CollapseConfig.top_k must be <= num_experts ({self.num_experts}), got {self.top_k}")

    def moe_config(self, router: str) -> MoEConfig:
        return MoEConfig(
            d_model=self.d_model,
            d_ff=self.d_ff,
            num_experts=self.num_experts,
            top_k=self.top_k,
            router=router,
            noise_seed=self.seed,
        )


AuxLoss = Callable[[RoutingRecord, CollapseConfig], torch.Tensor]
FAST = -1.0  # marker: take the factor from CollapseConfig.fast_gamma_factor


@dataclass(frozen=True)
class Setting:
    """One arm of the experiment: a router kind, the auxiliary loss added to the task loss, the bias rule."""

    name: str
    router: str
    aux: AuxLoss | None
    recipe: str
    gamma_factor: float | None = None  # bias balancing at gamma * factor (None: no bias balancing)

    def gamma(self, cfg: CollapseConfig) -> float | None:
        if self.gamma_factor is None:
            return None
        return cfg.gamma * (cfg.fast_gamma_factor if self.gamma_factor == FAST else self.gamma_factor)


SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        Setting("none", "softmax_topk", None, "softmax top-k, no balancing"),
        Setting(
            "importance",
            "softmax_topk",
            lambda r, c: importance_loss(r, c.importance_weight),
            "softmax top-k + importance CV^2 loss (Shazeer 2017 eq. 6-7)",
        ),
        Setting(
            "switch",
            "softmax_topk",
            lambda r, c: switch_loss(r, c.switch_alpha),
            "softmax top-k + Switch load-balancing loss alpha*E*sum f_i P_i",
        ),
        Setting(
            "switch+z",
            "softmax_topk",
            lambda r, c: switch_loss(r, c.switch_alpha) + z_loss(r, c.z_weight),
            "softmax top-k + Switch loss + ST-MoE router z-loss",
        ),
        Setting(
            "noisy",
            "noisy_topk",
            lambda r, c: importance_loss(r, c.importance_weight) + load_loss(r, c.top_k, c.load_weight),
            "noisy top-k gating (noise in training only) + importance loss + smooth load loss, both w = 0.1: "
            "the recipe of Shazeer 2017 (Appendix A), whose load loss needs the noise to be differentiable",
        ),
        Setting(
            "bias",
            "sigmoid_topk",
            None,
            "sigmoid top-k with the selection-only e_score_correction_bias, after each step "
            "bias_i += gamma * sign(mean_load - load_i) (DeepSeek-V3, auxiliary-loss-free)",
            gamma_factor=1.0,
        ),
        Setting(
            "bias-fast",
            "sigmoid_topk",
            None,
            "as bias, with gamma * fast_gamma_factor: how the update speed trades recovery time for stability",
            gamma_factor=FAST,
        ),
    )
}


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

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, RoutingRecord]:
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


StepHook = Callable[[int, RoutingRecord], None]


def train_setting(
    setting: Setting, cfg: CollapseConfig, task: ClusterRegression, on_step: StepHook | None = None
) -> list[dict]:
    """Train one model under `setting`; return one tidy row per step. `on_step(step, routing)` sees each record."""
    model = CollapseNet(cfg, setting.router)
    weights = model.moe.weights
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    batches = torch.Generator().manual_seed(cfg.seed + 1)  # the same batches in every setting
    x_eval, y_eval, _ = task.sample(cfg.eval_tokens, torch.Generator().manual_seed(cfg.seed + 2))
    gamma = setting.gamma(cfg)
    rows = []
    for step in range(cfg.steps):
        model.train()
        x, y, _ = task.sample(cfg.tokens, batches)
        prediction, routing = model(x)
        task_loss = F.mse_loss(prediction, y)
        aux = setting.aux(routing, cfg) if setting.aux is not None else task_loss.new_zeros(())
        optimizer.zero_grad(set_to_none=True)
        (task_loss + aux).backward()
        optimizer.step()
        bias_used = weights.router.e_score_correction_bias
        bias_used = bias_used.tolist() if bias_used is not None else None
        if gamma is not None:
            update_selection_bias(weights.router.e_score_correction_bias, routing.tokens_per_expert_E, gamma)
        if on_step is not None:
            on_step(step, routing)
        eval_loss = None
        if (step + 1) % cfg.eval_every == 0 or step == cfg.steps - 1:
            model.eval()
            with torch.no_grad():
                eval_loss = float(F.mse_loss(model(x_eval)[0], y_eval))
        rows.append(
            {
                "setting": setting.name,
                "step": step,
                "task_loss": task_loss.item(),
                "aux_loss": aux.item(),
                "eval_task_loss": eval_loss,
                "tokens": cfg.tokens,
                "top_k": cfg.top_k,
                **balance_columns(routing),  # the benchmark's columns: tokens_per_expert, load_cv, max/mean, ...
                **dead_columns(routing.tokens_per_expert_E),
                "selection_bias": bias_used,
            }
        )
    return rows


def run_collapse(
    cfg: CollapseConfig, out_dir: Path, settings: list[str] | None = None, on_step: StepHook | None = None
) -> dict:
    """Run every setting, write `collapse.jsonl` and `collapse_meta.json` to out_dir, return the meta dict."""
    names = list(SETTINGS) if settings is None else settings
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        raise ValueError(f"unknown collapse settings {unknown}; known: {', '.join(SETTINGS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    task = ClusterRegression(cfg)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    with open(out_dir / "collapse.jsonl", "w") as f:
        for name in names:
            t0 = time.perf_counter()
            hook = (lambda step, routing, name=name: on_step(name, step, routing)) if on_step else None
            for row in train_setting(SETTINGS[name], cfg, task, hook):
                f.write(json.dumps(row) + "\n")
            seconds[name] = time.perf_counter() - t0
    meta = _meta(cfg, names, seconds, time.perf_counter() - start)
    (out_dir / "collapse_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def _meta(cfg: CollapseConfig, names: list[str], seconds: dict[str, float], total_s: float) -> dict:
    probe = CollapseNet(cfg, "softmax_topk")
    expert_params = sum(p.numel() for p in probe.moe.weights.experts.parameters())
    return {
        "experiment": "collapse",
        "seed": cfg.seed,
        "config": asdict(cfg),
        "implementation": IMPL,
        "settings": {
            n: {"router": SETTINGS[n].router, "recipe": SETTINGS[n].recipe, "gamma": SETTINGS[n].gamma(cfg)}
            for n in names
        },
        "model": {
            "layout": "Linear(d_in, d_model) -> h + MoE(h) -> Linear(d_model, d_out)",
            "parameters": sum(p.numel() for p in probe.parameters()),
            "expert_parameters": expert_params,
            "parameters_per_expert": expert_params // cfg.num_experts,
        },
        "task": (
            f"{cfg.clusters} linear regression sub-tasks: x = offset + centre_c + {cfg.within_cluster_std}*z, "
            f"y = A_c z with A_c [{cfg.d_out}, {cfg.d_in}] ~ N(0, 1/d_in); loss = MSE (targets have unit variance)"
        ),
        "collapse_trigger": (
            f"every input shares an offset of norm {cfg.input_offset} (about {cfg.input_offset / cfg.cluster_spread:g}x "
            "the cluster spread), like the large common component of real hidden states: one router update along "
            "it raises an expert's logit for every token, so an early winner is chosen everywhere, trains faster "
            f"and keeps winning. The router weight starts at {cfg.router_init_scale}x the default init "
            "(near-uniform routing), so the winners come out of the training noise."
        ),
        "final_task_loss": "eval_task_loss at the last step: MSE on held-out inputs, eval mode (no router noise)",
        "gamma": cfg.gamma,
        "gamma_why": (
            f"bias uses the published gamma = {cfg.gamma:g} (DeepSeek-V3): over {cfg.steps} steps the bias can travel "
            f"up to {cfg.gamma * cfg.steps:g}, more than the (0, 1) range of the sigmoid scores it must overcome, so "
            "the published value is long enough to undo the collapse here, though it needs a few hundred steps. "
            f"bias-fast uses {cfg.gamma * cfg.fast_gamma_factor:g} to show the trade-off: it recovers within tens of "
            "steps but its fixed-size sign steps keep flipping the choice between experts with close scores, so "
            "its load oscillates. Override with --gamma."
        ),
        "dead_expert": "an expert that received no assignment in that step's batch (tokens_per_expert == 0)",
        "seconds": {"total": total_s, **seconds},
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def register(subparsers: argparse._SubParsersAction) -> None:
    defaults = CollapseConfig()
    parser = subparsers.add_parser(
        "collapse",
        help="router collapse with and without balancing (trains a small MoE on CPU)",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--steps", type=int, default=defaults.steps, help="optimizer steps per setting")
    parser.add_argument("--out", type=Path, default=Path("results/collapse"), help="output folder")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--gamma", type=float, default=defaults.gamma, help="bias balancing update speed")
    parser.add_argument(
        "--settings", default=",".join(SETTINGS), help=f"comma-separated subset of {', '.join(SETTINGS)}"
    )
    # The matmuls are tiny: a second thread costs more in synchronisation than it saves (measured: 100 steps
    # take ~0.3 s on one thread and ~5 s on two when other processes share the cores).
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest at these sizes)")
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from reports.collapse import render_collapse, summary_table

    torch.set_num_threads(args.threads)
    cfg = replace(CollapseConfig(), steps=args.steps, seed=args.seed, gamma=args.gamma)
    meta = run_collapse(cfg, args.out, [s.strip() for s in args.settings.split(",") if s.strip()])
    paths = render_collapse(args.out, args.out)
    print(summary_table(args.out).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"{meta['seconds']['total']:.1f} s; wrote {args.out / 'collapse.jsonl'} and {len(paths)} report files")
    return 0
