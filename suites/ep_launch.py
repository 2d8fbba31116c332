"""The expert-parallel branch of `moe-bench run`: start the ranks (or join torchrun's), then print the outcome.

Two ways in, one set of rows:
- `moe-bench run SUITE [--nproc N]`, not under torchrun: for each world size (the suite's `nproc` list, or N),
  `launch` starts `python -m torch.distributed.run --standalone --nproc-per-node W -m suites run SUITE --out OUT`
  (rendezvous on localhost, free port) and waits for it. Every launch writes into the same OUT; `--resume` makes
  each one skip the rows already there, so an interrupted run is completed by running the same command again.
- `torchrun --nproc-per-node W -m suites run SUITE --out OUT`: the ranks find RANK, WORLD_SIZE and LOCAL_RANK in
  their environment and run the suite's points at world size W (`suites.ep_run.run_rank`).

A failing launch prints one line naming the world size and the results directory; rows written before the
failure stay, and `--resume` continues. On CUDA each rank takes the GPU of its local rank, so a launch of more
ranks than torch sees GPUs is refused in one line before any rank starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import torch

from suites import ep_run
from suites.results import RESULTS
from suites.schema import EP_IMPL
from suites.spec import SuiteError, check_world_size
from suites.suite_model import Suite

LAUNCHED_ENV = "MOE_BENCH_EP_LAUNCHED"  # set by `launch`: the launcher, not rank 0, prints the summary


def run_expert_parallel(
    args: argparse.Namespace, suite: Suite, device: torch.device, out: Path, impls: list[str], baselines: list[str]
) -> int | None:
    """An exit status, or None when this is no expert-parallel run (the plain single-process run follows)."""
    job = ep_run.EPRun(suite, device, out, tuple(impls), tuple(baselines), progress=not args.no_progress)
    env = ep_run.torchrun_env()
    try:
        if env is not None:
            return _under_torchrun(args, job, *env)
        if EP_IMPL not in impls:
            if args.nproc is not None:
                raise SuiteError(f"--nproc {args.nproc}: suite {suite.name} has no {EP_IMPL!r} implementation")
            return None
        if args.nproc is not None:  # the suite's own nproc list was checked when it was loaded
            if args.nproc < 1:
                raise SuiteError(f"--nproc {args.nproc}: expected a positive number of ranks")
            check_world_size(suite.points, args.nproc, suite.path)
        if device.type == "cuda":
            _check_gpus(args.nproc, suite)
    except SuiteError as exc:
        print(f"moe-bench: {exc}", file=sys.stderr)
        return 2
    run_args = ["--device", args.device]
    run_args += ["--only", args.only] if args.only else []
    run_args += ["--no-progress"] if args.no_progress else []
    code = launch(suite, out, [args.nproc] if args.nproc is not None else list(suite.nproc), run_args)
    _finish(out, args.no_report)
    return code


def _check_gpus(nproc: int | None, suite: Suite) -> None:
    """SuiteError unless this machine has a GPU for every rank of the largest launch (rank r takes GPU r).

    Checked before any rank starts, which would otherwise die in set_device with "invalid device ordinal".
    `device_count`, like the `is_available` that chose the device, creates no CUDA context in the launcher.
    """
    ranks, gpus = nproc if nproc is not None else max(suite.nproc), torch.cuda.device_count()
    if ranks > gpus:
        where = f"--nproc {nproc}" if nproc is not None else f"nproc = {list(suite.nproc)} in {suite.path}"
        raise SuiteError(f"{where}: {ranks} ranks need {ranks} GPUs, one each, but torch.cuda.device_count() is {gpus}")


def _under_torchrun(
    args: argparse.Namespace, job: ep_run.EPRun, rank: int, world_size: int, local_rank: int
) -> int | None:
    suite = job.suite
    if args.nproc is not None:
        raise SuiteError(f"--nproc {args.nproc}: under torchrun the world size is torchrun's ({world_size})")
    if EP_IMPL not in job.impls:
        if world_size == 1:
            return None
        raise SuiteError(f"suite {suite.name} has no {EP_IMPL!r} implementation to run on {world_size} ranks")
    check_world_size(suite.points, world_size, suite.path)
    if job.device.type == "cuda" and local_rank >= (gpus := torch.cuda.device_count()):
        raise SuiteError(
            f"LOCAL_RANK {local_rank}: local rank r takes GPU r, but torch.cuda.device_count() is {gpus}; "
            f"start at most {gpus} rank(s) per node"
        )
    if args.out is None and not args.resume:  # every rank must agree on the directory: name it by the run id
        out = Path("results") / f"{suite.name}-{os.environ.get('TORCHELASTIC_RUN_ID', 'torchrun')}"
        job = dataclasses.replace(job, out=out)
    code = ep_run.run_rank(job)
    if rank == 0 and not os.environ.get(LAUNCHED_ENV):
        _finish(job.out, args.no_report)
    return code


def _finish(out: Path, no_report: bool) -> None:
    from reports.ep_summary import ep_summary_text  # the CLI is the composition root; the runner never renders

    print(ep_summary_text(out))
    print(f"-> {out}")
    if not no_report:
        from reports.render import render_report

        print(f"report: {render_report(out)}")


def launch(suite: Suite, out: Path, world_sizes: list[int], run_args: list[str]) -> int:
    """Start torchrun once per world size into `out`; 0 when every launch succeeded, else 1 after the first failure.

    `run_args` are the `moe-bench run` options the ranks need besides the suite and --out (e.g. --device, --only).
    """
    for world_size in world_sizes:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world_size}"]
        cmd += ["--max-restarts=0", "-m", "suites", "run", str(suite.path), "--out", str(out), "--no-report"]
        cmd += run_args
        if (out / RESULTS).exists():
            cmd.append("--resume")
        print(f"moe-bench: {suite.name}: {world_size} rank(s) -> {out}", file=sys.stderr, flush=True)
        # OMP_NUM_THREADS=1 as torchrun would set it (ranks use one thread each), without its banner about it.
        env = {**os.environ, "OMP_NUM_THREADS": "1", LAUNCHED_ENV: "1"}
        rc = subprocess.run(cmd, env=env).returncode
        if rc:
            print(
                f"moe-bench: the run on {world_size} rank(s) failed (exit {rc}); the failing rank's error is above; "
                f"rows measured so far are in {out} (rerun with --out {out} --resume)",
                file=sys.stderr,
            )
            return 1
    return 0
