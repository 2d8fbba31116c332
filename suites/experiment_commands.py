"""`moe-bench experiment ...`: a training experiment from `analysis`, then its report from `reports`.

The experiment itself knows nothing of rendering; this command runs it and renders what it wrote, as `run` does
for a suite. Each experiment is one sub-command of the `experiment` parser.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

import analysis.collapse
from analysis.collapse.experiment import run_collapse
from analysis.collapse.output import ROWS_FILE
from analysis.collapse.settings import SETTINGS, CollapseConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("experiment", help="run a training experiment and render its report")
    experiments = parser.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    _register_collapse(experiments)


def _register_collapse(subparsers: argparse._SubParsersAction) -> None:
    defaults = CollapseConfig()
    parser = subparsers.add_parser(
        "collapse",
        help="router collapse with and without balancing (trains a small MoE on CPU)",
        description=analysis.collapse.__doc__.splitlines()[0],
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
    parser.set_defaults(func=cmd_collapse)


def cmd_collapse(args: argparse.Namespace) -> int:
    from reports.collapse import collapse_table, render_collapse

    torch.set_num_threads(args.threads)
    cfg = replace(CollapseConfig(), steps=args.steps, seed=args.seed, gamma=args.gamma)
    meta = run_collapse(cfg, args.out, [s.strip() for s in args.settings.split(",") if s.strip()])
    paths = render_collapse(args.out, args.out)
    print(collapse_table(args.out).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"{meta['seconds']['total']:.1f} s; wrote {args.out / ROWS_FILE} and {len(paths)} report files")
    return 0
