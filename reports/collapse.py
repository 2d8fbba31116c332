"""Renders the router-collapse experiment from `collapse.jsonl` and `collapse_meta.json`; runs nothing.

Figures: tokens per expert over steps (one heatmap panel per setting), load CV and task loss over steps, and
final balance against final task loss (one point per setting); plus `collapse.md` with the summary table.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

ROWS = "collapse.jsonl"
META = "collapse_meta.json"


def load_collapse(results_dir: Path | str) -> tuple[pd.DataFrame, dict]:
    results_dir = Path(results_dir)
    for name in (ROWS, META):
        if not (results_dir / name).is_file():
            raise FileNotFoundError(f"expected {name} from `moe-bench experiment collapse` in {results_dir}")
    rows = pd.read_json(results_dir / ROWS, lines=True)
    meta = json.loads((results_dir / META).read_text())
    return rows, meta


def tail_window(steps: int) -> int:
    """Steps the final figures average over: the last tenth of the run, at least one step."""
    return max(1, steps // 10)


def collapse_table(results_dir: Path | str) -> pd.DataFrame:
    """One row per setting, in run order: balance averaged over the last tenth of the steps, held-out loss at the end.

    dead_experts counts experts that received no assignment in any step of that window, so a momentary gap
    in one batch does not count as dead.
    """
    rows, meta = load_collapse(results_dir)
    seconds = meta.get("seconds", {})
    out = []
    for setting, group in rows.groupby("setting", sort=False):
        group = group.sort_values("step")
        tail = group.tail(tail_window(len(group)))
        load_WE = np.array(tail["tokens_per_expert"].tolist())
        last = group.iloc[-1]
        out.append(
            {
                "setting": setting,
                "load_cv": tail["load_cv"].mean(),
                "max_over_mean": tail["load_max_over_mean"].mean(),
                "dead_experts": int((load_WE.sum(0) == 0).sum()),
                "num_experts": load_WE.shape[1],
                "task_loss": last["eval_task_loss"],
                "train_task_loss": tail["task_loss"].mean(),
                "aux_loss": tail["aux_loss"].mean(),
                "seconds": seconds.get(setting, math.nan),
            }
        )
    return pd.DataFrame(out)


def render_collapse(results_dir: Path | str, out_dir: Path | str) -> list[Path]:
    """Write collapse_heatmap.png, collapse_curves.png, collapse_tradeoff.png and collapse.md; return their paths."""
    rows, meta = load_collapse(results_dir)
    summary = collapse_table(results_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [
        _heatmap(rows, meta, out_dir / "collapse_heatmap.png"),
        _curves(rows, out_dir / "collapse_curves.png"),
        _tradeoff(summary, out_dir / "collapse_tradeoff.png"),
        _markdown(summary, meta, out_dir / "collapse.md"),
    ]
    return paths


def _settings(rows: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(rows["setting"]))


def _heatmap(rows: pd.DataFrame, meta: dict, path: Path) -> Path:
    settings = _settings(rows)
    ncols = min(3, len(settings))
    nrows = math.ceil(len(settings) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False, sharey=True, layout="constrained"
    )
    # An expert takes each token at most once, so its share of the T*k assignments is at most 1/k.
    norm = matplotlib.colors.PowerNorm(gamma=0.5, vmin=0.0, vmax=100.0 / meta["config"]["top_k"])
    image = None
    for ax, setting in zip(axes.flat, settings):
        group = rows[rows["setting"] == setting].sort_values("step")
        load_SE = np.array(group["tokens_per_expert"].tolist(), dtype=float)
        share_ES = 100.0 * load_SE.T / load_SE.sum(1)
        steps = group["step"].to_numpy()
        image = ax.imshow(
            share_ES,
            aspect="auto",
            origin="lower",
            interpolation="nearest",
            cmap="magma",
            norm=norm,
            extent=(steps[0] - 0.5, steps[-1] + 0.5, -0.5, share_ES.shape[0] - 0.5),
        )
        ax.set_title(setting)
        ax.set_xlabel("training step")
        ax.set_ylabel("expert index")
    for ax in list(axes.flat)[len(settings) :]:
        ax.axis("off")
    fig.colorbar(image, ax=axes, label="share of the step's assignments (%)", shrink=0.9)
    uniform = 100.0 / meta["config"]["num_experts"]
    fig.suptitle(f"Tokens per expert over training, per balancing setting (uniform = {uniform:g} % each)")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _curves(rows: pd.DataFrame, path: Path) -> Path:
    fig, (ax_cv, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    for setting in _settings(rows):
        group = rows[rows["setting"] == setting].sort_values("step")
        ax_cv.plot(group["step"], group["load_cv"], label=setting, linewidth=1)
        evals = group.dropna(subset=["eval_task_loss"])
        ax_loss.plot(evals["step"], evals["eval_task_loss"], marker="o", markersize=3, label=setting)
    ax_cv.set_title("Load imbalance over training")
    ax_cv.set_xlabel("training step")
    ax_cv.set_ylabel("load CV (std / mean of tokens per expert)")
    ax_loss.set_title("Held-out task loss over training")
    ax_loss.set_xlabel("training step")
    ax_loss.set_ylabel("task loss (MSE, unit-variance targets)")
    ax_loss.set_yscale("log")
    for ax in (ax_cv, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _tradeoff(summary: pd.DataFrame, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.scatter(summary["load_cv"], summary["task_loss"], s=40)
    for i, r in summary.iterrows():
        label = f"{r['setting']} ({r['dead_experts']}/{r['num_experts']} dead)"
        offset = (5, 4) if i % 2 == 0 else (5, -11)  # alternate above/below so neighbours do not overprint
        ax.annotate(label, (r["load_cv"], r["task_loss"]), textcoords="offset points", xytext=offset, fontsize=8)
    ax.margins(x=0.25, y=0.15)
    ax.set_title("Final balance vs final task loss, one point per setting")
    ax.set_xlabel("final load CV (std / mean of tokens per expert, last 10% of steps)")
    ax.set_ylabel("final held-out task loss (MSE)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _markdown(summary: pd.DataFrame, meta: dict, path: Path) -> Path:
    cfg = meta["config"]
    window = tail_window(cfg["steps"])
    header = "| setting | recipe | load CV | max/mean | dead experts | held-out task loss | aux loss | seconds |"
    lines = [
        "# Router collapse with and without balancing",
        "",
        f"{cfg['num_experts']} experts, top-{cfg['top_k']}, {cfg['tokens']} tokens per step, {cfg['steps']} steps, "
        f"seed {meta['seed']}, implementation `{meta['implementation']}`, "
        f"{meta['model']['parameters']} parameters. Task: {meta['task']}.",
        "",
        f"What makes collapse appear: {meta['collapse_trigger']}",
        "",
        f"Bias balancing gamma = {meta['gamma']:g}: {meta['gamma_why']}",
        "",
        f"Load CV and max/mean are averaged over the last {window} steps; dead experts received no assignment "
        f"in any of those steps; task loss is {meta['final_task_loss']}.",
        "",
        header,
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for _, r in summary.iterrows():
        recipe = meta["settings"].get(r["setting"], {}).get("recipe", "")
        lines.append(
            f"| {r['setting']} | {recipe} | {r['load_cv']:.3f} | {r['max_over_mean']:.2f} | "
            f"{r['dead_experts']}/{r['num_experts']} | {r['task_loss']:.4f} | {r['aux_loss']:.4f} | {r['seconds']:.1f} |"
        )
    lines += [
        "",
        "![tokens per expert](collapse_heatmap.png)",
        "",
        "![load CV and task loss over steps](collapse_curves.png)",
        "",
        "![balance vs task loss](collapse_tradeoff.png)",
        "",
    ]
    path.write_text("\n".join(lines))
    return path
