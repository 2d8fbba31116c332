"""`moe-bench run` and `moe-bench list`."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

import pandas as pd

import moe_impls
from suites import ep_run, spec
from suites.runner import Runner, resolve_device


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
        "--impl",
        action="append",
        default=[],
        metavar="MODULE:FACTORY",
        help="also run this plug-in (factory(cfg, weights) -> nn.Module, see moe_impls/plugins.py); repeatable",
    )
    run.add_argument(
        "--nproc", type=int, help="expert-parallel suites: launch N ranks through torch.distributed.run (see ep_run)"
    )
    run.set_defaults(func=cmd_run)
    lst = subparsers.add_parser("list", help="list suites, implementations, routers and baselines")
    lst.set_defaults(func=cmd_list)


def _error(message: str) -> int:
    print(f"moe-bench: {message}", file=sys.stderr)
    return 2


def cmd_run(args: argparse.Namespace) -> int:
    try:
        device = resolve_device(args.device)
        suite = spec.load(args.suite or ("gpu" if device.type == "cuda" else "cpu"))
    except ValueError as exc:
        return _error(str(exc))
    impls, baselines = list(suite.impls), list(suite.baselines)
    if args.only:
        only = [n.strip() for n in args.only.split(",") if n.strip()]
        known = [*moe_impls.names(), spec.EP_IMPL]
        unknown = [n for n in only if n not in known and n not in moe_impls.BASELINES]
        unknown = [n for n in unknown if not moe_impls.registry.is_known(n)]  # <impl>+compile, plug-ins
        if unknown:
            return _error(f"--only: {_unknown(unknown[0])}")
        impls = [n for n in only if n not in moe_impls.BASELINES]
        baselines = [n for n in only if n in moe_impls.BASELINES]
    for name in args.impl:
        if not moe_impls.registry.is_known(name):
            return _error(f"--impl: {_unknown(name)}")
        impls += [name] if name not in impls else []
    out = args.out
    if args.resume and out is None:
        previous = sorted(Path("results").glob(f"{suite.name}-*"))
        if not previous:
            return _error(f"--resume: no results/{suite.name}-* directory to resume; pass --out")
        out = previous[-1]
    if args.resume and not (out / "results.jsonl").exists():
        return _error(f"--resume: {out} has no results.jsonl to resume")
    if not args.resume and out is not None and (out / "results.jsonl").exists():
        return _error(f"--out {out} already holds results; pass --resume to complete it or choose another directory")
    out = out or Path("results") / f"{suite.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    code = ep_run.dispatch(args, suite, device, out, impls, baselines)  # None: not an expert-parallel run
    if code is not None:
        return code
    print(f"moe-bench: suite {suite.name} ({len(suite.points)} points) on {device} -> {out}", file=sys.stderr)
    summary = Runner(suite, device, out, impls, baselines, progress=not args.no_progress).run()
    print(summary_table(out))
    timed = summary.timed_s / summary.wall_s if summary.wall_s else 0
    print(f"\n{dict(summary.statuses)} in {summary.wall_s:.1f} s ({timed:.0%} of it in timed calls) -> {out}")
    if not args.no_report:
        from reports.render import render_report  # the CLI is the composition root; the runner never renders

        print(f"report: {render_report(out)}")
    return 1 if summary.failed else 0


def _unknown(name: str) -> str:
    try:
        moe_impls.resolve(name)
    except KeyError as exc:
        return str(exc.args[0])
    return f"{name!r} is known"


def summary_table(out: Path, max_rows: int = 40) -> str:
    """Median latency (ms) per point and implementation; failures shown by their status."""
    df = pd.read_json(out / "results.jsonl", lines=True)
    if df.empty:
        return "(no rows)"
    cell = df["latency_ms_median"].map(lambda v: f"{v:.3g}" if pd.notna(v) else "")
    df["cell"] = cell.where(df["status"] == "ok", df["status"])
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
    print("baselines:", ", ".join(moe_impls.BASELINES))
    print("routers:", ", ".join(moe_impls.ROUTERS))
    print("routing skews: uniform, zipf:S, hot:P, collapse")
    return 0
