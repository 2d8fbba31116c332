"""`moe-bench models`: every MoE model type of the installed transformers, one line each, with its sparse MoE block
and whether that block runs under each experts implementation.

Each type's tiny block (moe_impls/hf_models/configs.py: hidden 64, 8 experts, top-2, fp32, CPU) runs once under 'eager'
(the model's own experts forward) and once under every other registered implementation on the same weights and
tokens; an implementation passes when its output, input gradient and every parameter gradient are within the
fp32 tolerance of suites/reference.py of eager's. Our `moe_bench_*` implementations are registered first when
moe_impls/hf_experts.py exists. Kernel integrations that need a GPU (sonicmoe, deepgemm) are named, not run.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import dataclass

import torch

from suites.failures import one_line
from suites.reference import tolerance_for

DTYPE = "float32"
OK, DIFFERS, ERROR = "ok", "differs", "error"


@dataclass(frozen=True)
class Verdict:
    """How one implementation fared on one block: OK, DIFFERS (detail names the tensors) or ERROR (one line)."""

    status: str
    detail: str = ""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list transformers' MoE model types and which experts implementations run their block",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--tokens", type=int, default=8, help="tokens per check (default 8)")
    parser.add_argument("--only", metavar="REGEX", help="only the model types matching REGEX")
    parser.set_defaults(func=cmd_models)


def mismatches(run, ref, dtype: str = DTYPE) -> list[str]:
    """The tensors of `run` (an hf_models.BlockRun) farther from `ref`'s than the tolerance, each as
    'name err > tol'; a gradient present on one side only is a mismatch too."""
    pairs = [("output", run.y_TD, ref.y_TD), ("input grad", run.grad_x_TD, ref.grad_x_TD)]
    pairs += [(f"{name}.grad", run.grads.get(name), got) for name, got in ref.grads.items()]
    found = []
    for label, got, want in pairs:
        if got is None or want is None:
            if got is not want:
                found.append(f"{label} {'missing' if got is None else 'unexpected'}")
            continue
        err = float((got.float() - want.float()).abs().max()) if want.numel() else 0.0
        tol = tolerance_for(dtype, float(want.abs().max()) if want.numel() else 0.0)
        if not err <= tol:  # NaN fails too
            found.append(f"{label} {err:.1e} > {tol:.1e}")
    return found


@dataclass(frozen=True)
class Prepared:
    """A type's tiny block (fp32, CPU) with its tokens x [T, D], output gradient [T, D] and eager's run."""

    block: torch.nn.Module
    x_TD: torch.Tensor
    grad_y_TD: torch.Tensor
    eager: object  # hf_models.BlockRun


def prepare(model_type: str, tokens: int = 8, seed: int = 0) -> Prepared:
    from moe_impls import hf_models

    config = hf_models.tiny_config(model_type)
    block = hf_models.build_block(config, "cpu", torch.float32, seed)
    gen = torch.Generator().manual_seed(seed)
    x_TD = torch.randn(tokens, config.hidden_size, generator=gen)
    grad_y_TD = torch.randn(tokens, config.hidden_size, generator=gen)
    return Prepared(block, x_TD, grad_y_TD, hf_models.run_block(block, x_TD, "eager", grad_y_TD))


def judge(prepared: Prepared, implementation: str) -> Verdict:
    """`implementation` on the prepared block against eager, forward and backward; the block is left on eager."""
    from moe_impls import hf_models

    try:
        run = hf_models.run_block(prepared.block, prepared.x_TD, implementation, prepared.grad_y_TD)
    except Exception as e:
        return Verdict(ERROR, one_line(e))
    finally:
        hf_models.set_experts_implementation(prepared.block, "eager")
    bad = mismatches(run, prepared.eager)
    return Verdict(DIFFERS, "; ".join(bad)) if bad else Verdict(OK)


def check(model_type: str, implementations: list[str], tokens: int = 8) -> dict[str, Verdict]:
    """Each implementation's verdict on `model_type`'s tiny block; all ERROR when eager itself fails."""
    try:
        prepared = prepare(model_type, tokens)
    except Exception as e:
        return dict.fromkeys(implementations, Verdict(ERROR, f"eager fails: {one_line(e)}"))
    return {name: judge(prepared, name) for name in implementations}


def cmd_models(args: argparse.Namespace) -> int:
    from moe_impls import peers

    why = peers.unavailable_reason()
    if why:
        print(f"moe-bench: models needs transformers v5: {why}", file=sys.stderr)
        return 2
    import transformers

    from moe_impls import hf_models

    start = time.perf_counter()
    types = [mt for mt in hf_models.discover() if not args.only or re.search(args.only, mt.model_type)]
    hf_models.register_ours()
    names = [n for n in hf_models.implementation_names() if n != "eager"]
    gpu_only = {n: hf_models.needs_gpu_kernel(n) for n in names if hf_models.needs_gpu_kernel(n)}
    runnable = [n for n in names if n not in gpu_only]
    rows, failures = [], []
    for mt in types:
        with hf_models.one_thread():
            verdicts = {} if mt.why_not else check(mt.model_type, runnable, args.tokens)
        rows.append((mt, verdicts))
        failures += [(mt.model_type, n, v) for n, v in verdicts.items() if v.status != OK]
    print(_render(rows, runnable, transformers.__version__, args.tokens))
    for model_type, name, verdict in failures:
        print(f"  {model_type} under {name}: {verdict.status}: {verdict.detail}")
    if gpu_only:
        print("not run on this CPU: " + ", ".join(f"{n} ({w})" for n, w in gpu_only.items()))
    built = sum(1 for mt, _ in rows if not mt.why_not)
    print(f"{len(rows)} MoE model types, {built} with a block that runs; {time.perf_counter() - start:.1f} s")
    return 1 if failures else 0


def _render(rows, names: list[str], version: str, tokens: int) -> str:
    from moe_impls.hf_models import OURS

    heads = [n.removeprefix(OURS) + ("*" if n.startswith(OURS) else "") for n in names]
    type_w = max([len("model_type"), *(len(mt.model_type) for mt, _ in rows)])
    block_w = max([len("block"), *(len(_block_name(mt)) for mt, _ in rows)])
    lines = [
        f"transformers {version}: each MoE type's tiny block (fp32, CPU, {tokens} tokens) against eager, forward "
        f"and backward; * = {OURS}*",
        "  ".join([f"{'model_type':<{type_w}}", f"{'block':<{block_w}}", *heads]),
    ]
    for mt, verdicts in rows:
        cells = [f"{mt.model_type:<{type_w}}", f"{_block_name(mt):<{block_w}}"]
        if mt.why_not:
            cells.append(f"cannot run: {mt.why_not}")
        else:
            cells += [f"{verdicts[n].status:<{len(h)}}" for n, h in zip(names, heads)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _block_name(mt) -> str:
    return mt.block_class.__name__ if mt.block_class is not None else "-"
