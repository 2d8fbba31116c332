"""The `report` and `compare` commands of `moe-bench` (registered by suites/cli.py through COMMAND_MODULES).

Exit codes: report 0 written, 2 unreadable run or an output directory it may not write; compare 0 no
regression, 1 a point is significantly slower beyond the threshold (or newly fails, or is missing from NEW;
--strict: or was disturbed; --metric counters: a counter broke its rule), 2 bad input. Errors are one line on
stderr. Numeric options are read as text and checked here, so a bad value is one line too, naming the option.
"""

from __future__ import annotations

import argparse
import sys

# compare's options -> their argparse keywords; numbers are read as text and checked by reports.compare
COMPARE_OPTIONS: dict[str, dict] = {
    "--threshold": {"default": "5%", "help": "smallest change that counts, e.g. 5%% or 0.05 (default 5%%)"},
    "--metric": {
        "choices": ("latency", "ratio", "counters"),
        "default": "latency",
        "help": "latency: median ms; ratio: median / the same run's flop_matched median (portable across machines); "
        "counters: exact gate on the deterministic counters (host syncs, ATen ops, FLOPs, bytes; no threshold)",
    },
    "--reference": {
        "default": "flop_matched",
        "metavar": "IMPL",
        "help": "metric ratio: the row each median is divided by at the same point of the same run (default "
        "flop_matched; e.g. hf_grouped_mm gates ours against transformers)",
    },
    "--only": {
        "default": "",
        "metavar": "IMPLS",
        "help": "judge only these comma-separated rows (e.g. loop,sort_group: ours, not the transformers rows beside "
        "them); rows outside it are neither compared nor missed",
    },
    "--alpha": {"default": "0.01", "help": "significance level of the test, in (0, 1) (default 0.01)"},
    "--seed": {"default": "0", "help": "seed of the bootstrap resampling, >= 0 (default 0)"},
    "--confirm": {
        "default": None,
        "metavar": "RUN_DIR",
        "help": "a second run of the code under test: a row is slower only when NEW and RUN_DIR both measure it slower "
        "against BASE, even where the canary flagged a run; a slowdown in NEW alone is 'ambiguous' with RUN_DIR's "
        "change (a regression reproduces, a noisy neighbour rarely slows the same row twice)",
    },
    "--strict": {
        "action": "store_true",
        "help": "exit 1 when a point was timed on a disturbed machine in BASE or NEW; without it such a point is "
        "'ambiguous' (with the reason) and does not fail",
    },
}


def register(subparsers) -> None:
    report = subparsers.add_parser("report", help="render report.md, report.html and the plots of a run directory")
    report.add_argument("results_dir", metavar="RESULTS_DIR", help="run directory holding run.json and results.jsonl")
    report.add_argument(
        "--out",
        metavar="DIR",
        default=None,
        help="output directory (default RESULTS_DIR/report): new, empty, or one an earlier report wrote (it holds a "
        ".moe-bench-report marker); only the files that report wrote are replaced",
    )
    report.set_defaults(func=run_report)

    compare = subparsers.add_parser(
        "compare",
        help="verdict per point between two runs; exit 1 on a significant slowdown beyond the threshold",
        description="Compare two runs point by point from their raw samples (significance test + minimum effect).",
    )
    compare.add_argument("base_dir", metavar="BASE_DIR", help="the reference run")
    compare.add_argument("new_dir", metavar="NEW_DIR", help="the run under test")
    for flag, options in COMPARE_OPTIONS.items():
        compare.add_argument(flag, **options)
    compare.set_defaults(func=run_compare)


def _fail(command: str, message: str) -> int:
    print(f"moe-bench {command}: error: {message}", file=sys.stderr)
    return 2


def run_report(args: argparse.Namespace) -> int:
    from reports.load import RunLoadError
    from reports.outdir import ReportDirError
    from reports.render import render_report

    try:
        path = render_report(args.results_dir, args.out)
    except (RunLoadError, ReportDirError) as exc:
        return _fail("report", str(exc))
    print(f"wrote {path} and {path.with_name('report.md')}")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from reports.compare import CompareInputError, compare_runs
    from reports.compare_options import parse_alpha, parse_seed, parse_threshold

    try:
        threshold, alpha, seed = parse_threshold(args.threshold), parse_alpha(args.alpha), parse_seed(args.seed)
        if args.metric == "counters":  # exact counts: no threshold, test or seed applies
            from reports.counters_gate import gate_runs

            comparison = gate_runs(args.base_dir, args.new_dir)
        else:
            comparison = compare_runs(
                args.base_dir,
                args.new_dir,
                args.confirm,
                threshold=threshold,
                metric=args.metric,
                alpha=alpha,
                seed=seed,
                strict=args.strict,
                reference=args.reference,
                only=tuple(n.strip() for n in args.only.split(",") if n.strip()),
            )
    except CompareInputError as exc:
        return _fail("compare", str(exc))
    print(comparison.markdown())
    return comparison.exit_code
