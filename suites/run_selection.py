"""What a `moe-bench run` asks for: the suite (a name, a file, or `--model`'s block) and the rows (`--only`,
`--impl`), each refused in one line when it cannot run."""

from __future__ import annotations

import argparse

import torch

from suites import spec
from suites.impl_names import why_not_buildable, why_not_runnable
from suites.schema import DENSE_BASELINES
from suites.spec_fields import first_repeat
from suites.suite_model import Suite


def named_suite(args: argparse.Namespace, device: torch.device) -> Suite:
    if args.tokens or args.dtype or args.mode:
        raise ValueError("--tokens, --dtype and --mode go with --model; a suite file sets its own")
    return spec.load(args.suite if args.suite is not None else ("gpu" if device.type == "cuda" else "cpu"))


def model_suite(args: argparse.Namespace, device: torch.device) -> Suite:
    """The suite of `--model`: its block at the given token counts, dtype and modes, every experts
    implementation that runs on `device`."""
    from suites import model_rows

    if args.suite is not None:
        raise ValueError(f"--model {args.model}: give a suite or --model, not both (got suite {args.suite!r})")
    tokens = _listed("--tokens", args.tokens or "1,16,128,512", int)
    dtypes = _listed("--dtype", args.dtype or ("bfloat16" if device.type == "cuda" else "float32"), str)
    modes = _listed("--mode", args.mode or "forward", str)
    impls = list(model_rows.implementations(device))
    if args.only is not None:  # rows of the block: experts implementations (eager, the reference, always runs)
        only = _listed("--only", args.only, str)
        unknown = [n for n in only if n not in impls and n not in DENSE_BASELINES]
        if unknown:
            raise ValueError(f"--only: {unknown[0]!r} is no experts implementation here; expected {', '.join(impls)}")
        impls = [n for n in impls if n == model_rows.REFERENCE or n in only]
    return spec.model_suite(args.model, tokens, dtypes, modes, impls)


def _listed(option: str, text: str, kind: type) -> list:
    try:
        return [kind(v.strip()) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"{option}: expected comma-separated {kind.__name__} values, got {text!r}") from None


def selection(args: argparse.Namespace, suite: Suite) -> tuple[list[str], list[str]]:
    """Implementations and baselines to run: the suite's, or --only's, plus each --impl. A name given twice
    would write its rows twice, so it is refused like an unknown one."""
    impls, baselines = list(suite.impls), list(suite.baselines)
    if args.model and args.only is not None:  # the block's rows are chosen in model_suite
        return impls, [n for n in baselines if n in _listed("--only", args.only, str)]
    if args.only is not None:
        only = [n.strip() for n in args.only.split(",")]
        if not all(only):
            raise ValueError(f"--only {args.only!r}: expected comma-separated implementation or baseline names")
        _refuse_repeats("--only", only)
        reasons = [why for n in only if n not in DENSE_BASELINES and (why := why_not_runnable(n))]
        if reasons:
            raise ValueError(f"--only: {reasons[0]}")
        impls = [n for n in only if n not in DENSE_BASELINES]
        baselines = [n for n in only if n in DENSE_BASELINES]
    _refuse_repeats("--impl", args.impl)
    for name in args.impl:  # a layer this process builds (a plug-in, usually), so never expert_parallel
        why = why_not_buildable(name)
        if why:
            raise ValueError(f"--impl: {why}")
        impls += [name] if name not in impls else []
    return impls, baselines


def _refuse_repeats(option: str, names: list[str]) -> None:
    repeated = first_repeat(names)
    if repeated is not None:
        raise ValueError(f"{option}: {repeated!r} is given twice")
