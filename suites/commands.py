"""`moe-bench run` and `moe-bench list`."""

from __future__ import annotations

import argparse
import dataclasses
import re
import shlex
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
import torch

import moe_impls
from suites import ep_launch, ep_run, results, run_selection, spec
from suites.results import ResultsError, ResultsWriteError
from suites.runner import Runner, resolve_device
from suites.schema import DENSE_BASELINES
from suites.suite_model import Suite

DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")  # checked before torch.device, which raises RuntimeError
INTERRUPTED = 130  # the shell's exit status for a process ended by SIGINT


def register(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.add_parser("run", help="run a suite and render its report")
    run.add_argument("suite", nargs="?", help="suite name or TOML path (default: gpu with CUDA, else cpu)")
    run.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    run.add_argument("--out", type=Path, help="results directory (default results/<suite>-<timestamp>)")
    run.add_argument("--resume", action="store_true", help="complete an interrupted run in --out (or the newest)")
    run.add_argument("--only", help="comma-separated implementations/baselines to run")
    run.add_argument("--no-report", action="store_true", help="skip rendering the report")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument(
        "--inline",
        action="store_true",
        help="measure in this process instead of a worker (for a debugger); an exit() in an implementation then "
        "ends the run",
    )
    run.add_argument(
        "--impl",
        action="append",
        default=[],
        metavar="MODULE:FACTORY",
        help="also run this plug-in (factory(cfg, weights) -> nn.Module, see moe_impls/plugins.py); repeatable",
    )
    run.add_argument(
        "--nproc", type=int, help="expert-parallel suites: launch N ranks through torch.distributed.run (see ep_run)"
    )
    run.add_argument(
        "--model",
        metavar="MODEL",
        help="a transformers model_type or config.json: time its own MoE block under every experts implementation",
    )
    run.add_argument("--tokens", help="with --model: comma-separated token counts (default 1,16,128,512)")
    run.add_argument(
        "--dtype", help="with --model: float32, bfloat16 or float16 (default: bfloat16 on CUDA, else float32)"
    )
    run.add_argument("--mode", help="with --model: forward, train or forward,train (default forward)")
    run.add_argument(
        "--plan", action="store_true", help="run nothing: predict every row's memory and time, and the total"
    )
    run.add_argument(
        "--plan-device", metavar="NAME", help="with --plan: a device profile (h100-80gb, h200, a100-80gb, l4)"
    )
    run.set_defaults(func=cmd_run)
    lst = subparsers.add_parser("list", help="list suites, implementations, routers and baselines")
    lst.set_defaults(func=cmd_list)


@dataclass(frozen=True)
class _Plan:
    """What `moe-bench run` measures, where and into which directory, once every option is checked."""

    suite: Suite
    device: torch.device
    out: Path
    impls: list[str]
    baselines: list[str]


def _error(message: str) -> int:
    print(f"moe-bench: {message}", file=sys.stderr)
    return 2


def _print_plan(suite: Suite, args: argparse.Namespace, device: torch.device) -> int:
    """A named datasheet profile, or this machine's own peaks (measured in a few seconds) and free memory."""
    from analysis import devices
    from suites import plan
    from suites.memory import available_bytes
    from suites.peaks import measure_peaks

    if args.plan_device:
        profile = devices.profile(args.plan_device)
    else:
        peaks = measure_peaks(device, [getattr(torch, d) for d in suite.dtypes])
        memory = available_bytes(device) or 0
        profile = devices.measured(device.type, memory, peaks["matmul_tflops"], peaks["bandwidth_gbs"])
    print(plan.render(plan.plan(suite, profile)))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    try:
        device = _device(args.device)
        suite = run_selection.model_suite(args, device) if args.model else run_selection.named_suite(args, device)
        impls, baselines = run_selection.selection(args, suite)
        if args.plan:
            return _print_plan(dataclasses.replace(suite, impls=tuple(impls), baselines=tuple(baselines)), args, device)
        out = _out_dir(args, suite)
    except KeyError as exc:  # an unknown --plan-device: its message is the one argument
        return _error(str(exc.args[0]))
    except (ValueError, ResultsError) as exc:
        return _error(str(exc))
    resume = _resume_command(args, suite, out)
    try:
        return _run(args, _Plan(suite, device, out, impls, baselines))
    except ResultsWriteError as exc:
        return _error(f"{exc}; the rows written so far are kept: free space, then resume with: {resume}")
    except ResultsError as exc:
        return _error(str(exc))
    except KeyboardInterrupt:
        print(
            f"moe-bench: interrupted; {results.count_rows(out)} row(s) kept in {out}; resume with: {resume}",
            file=sys.stderr,
        )
        return INTERRUPTED


def _device(text: str) -> torch.device:
    """--device, checked as text first: torch.device('tpu') and torch.device('cuda:abc') raise RuntimeError."""
    if not DEVICE.fullmatch(text):
        raise ValueError(f"--device: expected auto, cpu, cuda or cuda:N, got {text!r}")
    device = resolve_device(text)
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def _out_dir(args: argparse.Namespace, suite: Suite) -> Path:
    """--out, the newest results/<suite>-* for a bare --resume, or a new results/<suite>-<timestamp>; refused
    now if another run wrote it (check_resume) or it cannot take this one (check_usable)."""
    out = args.out
    if args.resume and out is None:
        previous = sorted(p for p in Path("results").glob(f"{suite.name}-*") if p.is_dir())
        if not previous:
            raise ValueError(f"--resume: no results/{suite.name}-* directory to resume; pass --out DIR")
        out = previous[-1]
    if args.resume:
        results.check_resume(out, suite.name, suite.file_hash)
    elif out is not None and (out / results.RESULTS).exists():
        raise ValueError(f"--out {out} already holds results; pass --resume to complete it or choose another directory")
    out = out or Path("results") / f"{suite.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    if ep_run.torchrun_env() is None:  # torchrun's ranks get here at once: the writer on rank 0 locks alone
        results.check_usable(out)
    return out


def _disturbed_line(summary) -> str:
    n = len(summary.disturbed)
    if not n:
        return "steady: no point was disturbed (suites/steadiness.py)"
    return f"disturbed: {n} point(s) timed on a disturbed machine; their numbers are no finding (see the report)"


def _resume_command(args: argparse.Namespace, suite: Suite, out: Path) -> str:
    """The command that continues this run: the same suite, rows, device and report, into the same directory."""
    cmd = ["moe-bench", "run", *(["--model", args.model] if args.model else [args.suite or suite.name])]
    cmd += [
        arg for opt in ("tokens", "dtype", "mode") if getattr(args, opt) for arg in (f"--{opt}", getattr(args, opt))
    ]
    cmd += ["--out", str(out), "--resume"]
    cmd += ["--device", args.device] if args.device != "auto" else []
    cmd += ["--only", args.only] if args.only is not None else []
    cmd += [arg for name in args.impl for arg in ("--impl", name)]
    cmd += ["--nproc", str(args.nproc)] if args.nproc is not None else []
    cmd += ["--no-report"] if args.no_report else []
    return shlex.join(cmd)


def _run(args: argparse.Namespace, plan: _Plan) -> int:
    suite, device, out = plan.suite, plan.device, plan.out
    code = ep_launch.run_expert_parallel(args, suite, device, out, plan.impls, plan.baselines)  # None: not EP
    if code is not None:
        return code
    print(f"moe-bench: suite {suite.name} ({len(suite.points)} points) on {device} -> {out}", file=sys.stderr)
    isolate, progress = not args.inline, not args.no_progress
    summary = Runner(suite, device, out, plan.impls, plan.baselines, progress=progress, isolate=isolate).run()
    print(run_summary_text(out))
    timed = summary.timed_s / summary.wall_s if summary.wall_s else 0
    print(f"\n{dict(summary.statuses)} in {summary.wall_s:.1f} s ({timed:.0%} of it in timed calls) -> {out}")
    print(_disturbed_line(summary))
    if not summary.complete:
        print(
            f"moe-bench: {summary.planned - summary.written} of {summary.planned} planned rows missing", file=sys.stderr
        )
    if not args.no_report:
        from reports.render import render_report  # the CLI is the composition root; the runner never renders

        print(f"report: {render_report(out)}")
    return 1 if summary.failed else 0


def run_summary_text(out: Path, max_rows: int = 40) -> str:
    """The terminal's table of a finished run: median latency (ms) per point and implementation, failures shown
    by their status (the report's typed tables are in reports/)."""
    df = pd.read_json(out / "results.jsonl", lines=True)
    if df.empty:
        return "(no rows)"
    medians = df["latency_ms_median"] if "latency_ms_median" in df else pd.Series(float("nan"), index=df.index)
    cell = medians.map(lambda v: f"{v:.3g}" if pd.notna(v) else "")
    df["cell"] = cell.where(df["status"] == "ok", df["status"])  # a run where no row was timed shows statuses
    keys = ["shape", "tokens", "dtype", "mode", "routing"]
    table = df.pivot_table(index=keys, columns="impl", values="cell", aggfunc="first", sort=False)
    text = table.to_string(max_rows=max_rows)
    return f"median latency (ms) per call\n{text}"


def cmd_list(args: argparse.Namespace) -> int:
    print("suites:")
    for name, description in spec.available().items():
        print(f"  {name:8s} {description}")
    print("implementations:", ", ".join(moe_impls.names()))
    absent = moe_impls.peers.absent()
    if absent:
        print(f"  peers {', '.join(absent)} absent: {next(iter(absent.values()))}")
    print("  any of them as <impl>+compile: torch.compile (mode default), compile time in compile_s")
    plugins = moe_impls.plugins.entry_point_names()
    print(f"plug-ins ({moe_impls.plugins.GROUP} entry points):", ", ".join(plugins) or "none installed")
    print("  or run one by path: moe-bench run --impl package.module:factory")
    print("baselines:", ", ".join(DENSE_BASELINES))
    print("routers:", ", ".join(moe_impls.ROUTERS))
    print("routing skews: uniform, zipf:S, hot:P, collapse")
    return 0
