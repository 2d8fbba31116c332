"""`moe-bench gpu-smoke`: the first command on a new GPU. Runs the gpu-smoke suite (and, with 2 or more GPUs, its
sort_group rows on cuda:1 and the ep-smoke suite on 2 NCCL ranks), then prints one screen saying which CUDA
paths ran, judged from the rows (reports/cuda_paths.py). Exit 0 only when every path that applies ran."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

import torch


def register(subparsers: argparse._SubParsersAction) -> None:
    smoke = subparsers.add_parser("gpu-smoke", help="check every CUDA path once (< 1 min) and say which ran")
    smoke.add_argument("--out", type=Path, help="results directory (default results/gpu-smoke-<timestamp>)")
    smoke.add_argument("--no-progress", action="store_true", help="no progress bar")
    smoke.set_defaults(func=cmd_gpu_smoke)


def cmd_gpu_smoke(args: argparse.Namespace) -> int:
    if not torch.cuda.is_available():
        print(
            "moe-bench: gpu-smoke needs a CUDA device and torch sees none; on a CPU: moe-bench run smoke",
            file=sys.stderr,
        )
        return 2
    from reports import cuda_paths  # the command is the composition root: it runs, then judges
    from suites.cli import main

    out = args.out or Path("results") / f"gpu-smoke-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    quiet = ["--no-progress"] if args.no_progress else []
    gpus = torch.cuda.device_count()
    runs = {"cuda0": ["run", "gpu-smoke", "--device", "cuda:0", *quiet]}
    if gpus >= 2:
        runs["cuda1"] = ["run", "gpu-smoke", "--device", "cuda:1", "--only", "sort_group", "--no-report", *quiet]
        runs["nccl"] = ["run", "ep-smoke", "--device", "cuda", "--nproc", "2", "--no-report", *quiet]
    failed = [name for name, argv in runs.items() if main([*argv, "--out", str(out / name)]) != 0]
    loaded = {name: _load(out / name) for name in runs}
    if loaded["cuda0"] is None:
        print(f"moe-bench: gpu-smoke wrote no rows; see {out / 'cuda0'}", file=sys.stderr)
        return 1
    meta, smoke = loaded["cuda0"]
    frames = {name: None if got is None else got[1] for name, got in loaded.items()}
    found = cuda_paths.paths(smoke, gpus, frames.get("cuda1"), frames.get("nccl"))
    print(cuda_paths.render(found, meta.get("device_name") or torch.cuda.get_device_name(0)))
    if failed:
        print(f"moe-bench: these runs did not finish cleanly: {', '.join(failed)} (in {out})", file=sys.stderr)
    return 0 if cuda_paths.all_ran(found) and not failed else 1


def _load(run_dir: Path):
    """(run.json, rows) of a run directory, or None when the run wrote nothing readable."""
    from reports.load import RunLoadError, load_run

    try:
        return load_run(run_dir)
    except (OSError, RunLoadError):
        return None
