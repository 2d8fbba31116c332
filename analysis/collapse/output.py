"""What the collapse experiment writes: `collapse.jsonl` (one row per setting x step) and `collapse_meta.json`
(the configuration, the recipes and the reasons behind the knobs, which `reports.collapse` prints beside them)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

import torch

from analysis.collapse.settings import IMPL, SETTINGS, CollapseConfig
from analysis.collapse.train import CollapseNet

ROWS_FILE = "collapse.jsonl"
META_FILE = "collapse_meta.json"


@dataclass(frozen=True)
class RunTimes:
    """Wall seconds of the whole run and of each setting, in run order."""

    total_s: float
    per_setting_s: dict[str, float]


def write_rows(f: IO[str], rows: list[dict]) -> None:
    for row in rows:
        f.write(json.dumps(row) + "\n")


def write_meta(out_dir: Path, meta: dict) -> None:
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def collapse_meta(cfg: CollapseConfig, names: list[str], times: RunTimes) -> dict:
    """The run's description: what was trained, on what task, why collapse appears, and how long it took."""
    return {
        "experiment": "collapse",
        "seed": cfg.seed,
        "config": asdict(cfg),
        "implementation": IMPL,
        "settings": {
            n: {"router": SETTINGS[n].router, "recipe": SETTINGS[n].recipe, "gamma": SETTINGS[n].gamma(cfg)}
            for n in names
        },
        "model": _model_sizes(cfg),
        **_explanations(cfg),
        "seconds": {"total": times.total_s, **times.per_setting_s},
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def _model_sizes(cfg: CollapseConfig) -> dict:
    probe = CollapseNet(cfg, "softmax_topk")
    expert_params = sum(p.numel() for p in probe.moe.weights.experts.parameters())
    return {
        "layout": "Linear(d_in, d_model) -> h + MoE(h) -> Linear(d_model, d_out)",
        "parameters": sum(p.numel() for p in probe.parameters()),
        "expert_parameters": expert_params,
        "parameters_per_expert": expert_params // cfg.num_experts,
    }


def _explanations(cfg: CollapseConfig) -> dict:
    """The task, the collapse trigger and the gamma choice, in words with this run's numbers."""
    return {
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
    }
