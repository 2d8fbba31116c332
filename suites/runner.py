"""Runs a suite: at each point, every implementation over one shared set of weights and one input, each
checked against the reference before it is timed, then every dense baseline. One row per implementation x
point goes to disk as soon as it is measured.
"""

from __future__ import annotations

import gc
import platform
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

import moe_impls
from moe_impls import MoEWeights, RoutingRecord
from suites import flops as F
from suites.balance import balance_columns, experts_touched
from suites.memory import available_bytes, measure_memory
from suites.nvml import NVML
from suites.peaks import measure_peaks
from suites.results import ResultsWriter, read_run_meta, write_run_meta
from suites.spec import Point, Suite
from suites.timing import Timed, Timing, time_rows

# max |impl - reference| allowed, relative to the reference's largest magnitude
RTOL = {"float32": 1e-4, "bfloat16": 3e-2, "float16": 5e-3}
# dense_all materialises [E, T, H]; above this many bytes the reference is `loop` (tested equal to dense_all)
DENSE_REFERENCE_MAX_BYTES = 1 << 30
# a row whose predicted footprint exceeds this share of the free memory is skipped, never attempted
MEMORY_HEADROOM = 0.8


@dataclass(frozen=True)
class Pending:
    """A row whose output matched the reference, waiting to be timed with its point's other rows."""

    timed: Timed
    finish: Callable[[Timing], dict]


@dataclass
class RunSummary:
    out_dir: Path
    statuses: Counter = field(default_factory=Counter)
    timed_s: float = 0.0
    wall_s: float = 0.0

    @property
    def failed(self) -> bool:
        return bool(self.statuses["wrong"] or self.statuses["error"])


def resolve_device(requested: str | None) -> torch.device:
    if requested in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {requested}: CUDA is not available to torch {torch.__version__}")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device: expected cpu or cuda, got {requested!r}")
    return device


def git_commit() -> str | None:
    try:
        here = Path(__file__).parent
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True).stdout
        return sha.stdout.strip() + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device, nvml: NVML) -> dict:
    return {
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "python_version": platform.python_version(),
        "host": platform.node(),
        "device": device.type,
        "device_name": device_name(device),
        "cpu_threads": torch.get_num_threads(),
        "nvml": nvml.info(),
        "argv": sys.argv,
    }


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


class Runner:
    def __init__(
        self,
        suite: Suite,
        device: torch.device,
        out_dir: Path,
        impls: list[str] | None = None,
        baselines: list[str] | None = None,
        progress: bool = True,
    ) -> None:
        self.suite, self.device, self.out_dir = suite, device, out_dir
        self.impls = list(suite.impls if impls is None else impls)
        self.baselines = list(suite.baselines if baselines is None else baselines)
        self.progress = progress
        self.nvml = NVML(device)

    # ---- the run ------------------------------------------------------------------------------------------
    def run(self) -> RunSummary:
        summary = RunSummary(self.out_dir)
        start = time.perf_counter()
        writer = ResultsWriter(self.out_dir)
        meta = self._start_meta(resumed=bool(writer.done))
        self.peaks = meta["peaks"]
        write_run_meta(self.out_dir, meta)
        rows_per_point = len(self.impls) + len(self.baselines)
        bar = _progress(len(self.suite.points) * rows_per_point, enabled=self.progress)
        try:
            for point in self.suite.points:
                todo = [n for n in self.impls + self.baselines if (point.point_id, n) not in writer.done]
                bar.update(rows_per_point - len(todo))
                if not todo:
                    continue
                for row in self._run_point(point, todo, bar):
                    writer.write(row)
                    summary.statuses[row["status"]] += 1
                    summary.timed_s += sum(row.get("samples_ms") or []) / 1e3
                    bar.update(1)
        finally:
            bar.close()
            writer.close()
            summary.wall_s = time.perf_counter() - start
            meta.update(
                finished=_now(),
                wall_s=meta.get("wall_s", 0) + summary.wall_s,
                timed_fraction=summary.timed_s / summary.wall_s if summary.wall_s else None,
                statuses=dict(summary.statuses),
            )
            write_run_meta(self.out_dir, meta)
        return summary

    def _start_meta(self, resumed: bool) -> dict:
        if resumed and (self.out_dir / "run.json").exists():
            meta = read_run_meta(self.out_dir)
            meta.setdefault("resumed_at", []).append(_now())
            return meta
        dtypes = [getattr(torch, d) for d in self.suite.dtypes]
        return {
            "suite": self.suite.name,
            "suite_path": str(self.suite.path),
            "suite_hash": self.suite.file_hash,
            "seed": self.suite.seed,
            "impls": self.impls,
            "baselines": self.baselines,
            "timing": asdict(self.suite.timing),
            "started": _now(),
            "finished": None,
            **environment(self.device, self.nvml),
            "peaks": measure_peaks(self.device, dtypes),
        }

    # ---- one point ------------------------------------------------------------------------------------------
    def _run_point(self, point: Point, todo: list[str], bar) -> list[dict]:
        cfg = point.moe_config()
        dtype = getattr(torch, point.dtype)
        base = {**point.columns(), "device": self.device.type, "world_size": 1}
        gen = torch.Generator().manual_seed(self.suite.seed)
        try:
            x = torch.randn(point.tokens, point.d_model, generator=gen).to(self.device, dtype)
            grad_out = torch.randn(point.tokens, point.d_model, generator=gen).to(self.device, dtype)
            weights = MoEWeights(cfg, device=self.device, dtype=dtype, seed=self.suite.seed)
            reference, ref_out, ref_grad, ref_routing = self._reference(weights, x, grad_out, point.mode)
        except Exception as exc:
            status = "oom" if is_oom(exc) else "error"
            _release()
            return [self._failed(base, name, status, f"point setup: {one_line(exc)}") for name in todo]
        label = f"{point.shape} T={point.tokens} {point.dtype} {point.mode} {point.routing}"
        rows, pending = [], {}
        for name in todo:
            bar.set_postfix_str(f"{label} {name} (check)")
            family = "dense" if name in moe_impls.BASELINES else "moe"
            row = {**base, "impl": name, "family": family, "reference": reference if family == "moe" else None}
            row.update(compile_s=None, predicted_mem_bytes=None)
            try:
                if family == "moe":
                    result = self._check_moe(name, weights, x, grad_out, point, ref_out, ref_grad, ref_routing)
                else:
                    result = self._check_dense(name, x, grad_out, point)
                if isinstance(result, Pending):
                    pending[name] = (row, result)
                else:
                    row.update(result)
            except Exception as exc:
                row.update(status="oom" if is_oom(exc) else "error", error=one_line(exc))
                _release()
            rows.append(row)
        bar.set_postfix_str(f"{label}: timing {len(pending)} rows round-robin")
        timings = time_rows({n: p.timed for n, (_, p) in pending.items()}, self.device, self.suite.timing)
        for name, (row, p) in pending.items():
            try:
                if timings[name].error is not None:
                    raise timings[name].error
                row.update(p.finish(timings[name]))
            except Exception as exc:
                row.update(status="oom" if is_oom(exc) else "error", error=one_line(exc))
                _release()
        return rows

    def _failed(self, base: dict, name: str, status: str, error: str) -> dict:
        family = "dense" if name in moe_impls.BASELINES else "moe"
        return {**base, "impl": name, "family": family, "status": status, "error": error}

    def _reference(self, weights: MoEWeights, x, grad_out, mode: str):
        cfg = weights.cfg
        dense_bytes = cfg.num_experts * x.shape[0] * cfg.expert_in_features * x.element_size()
        name = moe_impls.REFERENCE if dense_bytes <= DENSE_REFERENCE_MAX_BYTES else "loop"
        out, grad, routing = check_call(moe_impls.get(name)(weights), x, grad_out, mode)
        return name, out, grad, routing

    # ---- measuring one row ----------------------------------------------------------------------------------
    def _check_moe(
        self, name, weights: MoEWeights, x, grad_out, point: Point, ref_out, ref_grad, ref_routing
    ) -> dict | Pending:
        """A finished row (skipped, wrong) or, once the output matched the reference, a row waiting for its timing."""
        impl = moe_impls.resolve(name)  # built-ins, peers, <impl>+compile and plug-ins alike
        predicted = impl.predicted_bytes(weights.cfg, point.tokens, x.dtype, point.mode)
        skip = self._skip_reason(impl, weights.cfg, predicted)
        if skip:
            return {"status": "skipped", "error": skip, "predicted_mem_bytes": predicted}
        layer = impl(weights)
        compile_s = None
        if impl.compiled:  # the first call compiles; it is timed on its own, outside every measurement
            start = time.perf_counter()
            check_call(layer, x, grad_out, point.mode)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            compile_s = time.perf_counter() - start
        (out, grad, routing), memory = measure_memory(lambda: check_call(layer, x, grad_out, point.mode), self.device)
        extra = {"compile_s": compile_s, "predicted_mem_bytes": predicted}
        if not isinstance(out, torch.Tensor) or out.shape != ref_out.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            return {**extra, "status": "wrong", "error": f"output {got}, expected {tuple(ref_out.shape)} (the input's)"}
        if point.mode == "train" and grad is None:
            return {**extra, "status": "wrong", "error": "no gradient reached the input in train mode"}
        if routing is None:  # a plug-in that returns no routing record: its balance is the reference's routing
            routing = replace(ref_routing, computed_rows=None)
        scale = max(float(ref_out.abs().max()) if ref_out.numel() else 0.0, 1e-6)
        tolerance = RTOL[point.dtype] * scale
        err = float((out.float() - ref_out.float()).abs().max()) if out.numel() else 0.0
        if grad is not None:
            grad_scale = max(float(ref_grad.abs().max()), 1e-6)
            err = max(err, float((grad.float() - ref_grad.float()).abs().max()) * scale / grad_scale)
        check = {**extra, "max_abs_err": err, "tolerance": tolerance, **balance_columns(routing)}
        if not err <= tolerance:
            return {**check, "status": "wrong", "error": f"max |out - reference| = {err:.3g} > {tolerance:.3g}"}
        cfg = weights.cfg
        per_expert = weights.expert_bytes() // cfg.num_experts
        touched = experts_touched(routing) * per_expert + weights.router.weight.numel() * x.element_size()
        flops = F.moe_flops(cfg, point.tokens, routing.token_idx_N.numel(), point.mode)
        return self._pending(layer, x, grad_out, point, flops, touched, weights.nbytes(), memory, check)

    def _skip_reason(self, impl: moe_impls.Impl, cfg: moe_impls.MoEConfig, predicted: int | None) -> str | None:
        """Why the row is not attempted: the implementation cannot express `cfg`, or it cannot fit in memory."""
        why = impl.unsupported(cfg)
        if why or predicted is None:
            return why
        free = available_bytes(self.device)
        if free is not None and predicted > MEMORY_HEADROOM * free:
            return (
                f"predicted {predicted / 1e9:.3g} GB per call > {MEMORY_HEADROOM:.0%} of the "
                f"{free / 1e9:.3g} GB available on {self.device.type}"
            )
        return None

    def _check_dense(self, name, x, grad_out, point: Point) -> Pending:
        cfg = point.moe_config()
        dense = moe_impls.BASELINES[name](cfg, device=self.device, dtype=x.dtype, seed=self.suite.seed)
        weight_bytes = sum(p.numel() * p.element_size() for p in dense.parameters())
        flops = F.dense_flops(cfg.d_model, dense.d_ff, cfg.activation, point.tokens, point.mode)
        _, memory = measure_memory(lambda: check_call(dense, x, grad_out, point.mode), self.device)
        return self._pending(dense, x, grad_out, point, flops, weight_bytes, weight_bytes, memory, {})

    def _pending(
        self, module, x, grad_out, point: Point, flops: int, touched: int, weight_bytes: int, memory, check: dict
    ) -> Pending:
        """The row's timed call, and how its timing becomes the row's figures (energy is measured then, alone)."""
        call, setup = timed_call(module, x, grad_out, point.mode)
        timed = Timed(call, setup, graph_ok=point.mode == "forward" and bool(getattr(module, "capturable", False)))
        return Pending(
            timed,
            lambda timing: {**check, **self._figures(timing, call, x, point, flops, touched, weight_bytes, memory)},
        )

    def _figures(self, timing: Timing, call, x, point: Point, flops, touched, weight_bytes, memory) -> dict:
        """Statistics and derived figures of a timed row; `memory` was measured on its first (checked) call."""
        stats = timing.stats
        energy_ms = self.suite.timing.energy_ms
        energy = self.nvml.measure_energy(call, energy_ms) if self.device.type == "cuda" else None
        seconds = stats.median * 1e-3
        peak_tflops = self.peaks["matmul_tflops"].get(point.dtype)
        bytes_min = F.min_bytes(touched, point.tokens, point.d_model, x.element_size(), point.mode)
        bound_s = max(flops / (peak_tflops * 1e12), bytes_min / (self.peaks["bandwidth_gbs"] * 1e9))
        input_bytes = x.numel() * x.element_size()
        return {
            "status": "ok",
            "error": None,
            "timer": timing.timer,
            "timer_note": timing.note,
            "samples_ms": timing.samples_ms,
            **stats.columns(),
            "tokens_per_s": point.tokens / seconds,
            "flops": flops,
            "tflops": flops / seconds / 1e12,
            "peak_fraction": flops / seconds / 1e12 / peak_tflops if peak_tflops else None,
            "bytes_min": bytes_min,
            "arith_intensity": flops / bytes_min,
            "bound_ms": bound_s * 1e3,
            "mem_kind": memory.kind,
            "peak_mem_bytes": weight_bytes + input_bytes + memory.call_peak_bytes,
            "reserved_mem_bytes": memory.reserved_bytes,
            "weight_bytes": weight_bytes,
            "activation_bytes": memory.call_peak_bytes,
            "energy_j": energy.joules_per_call if energy else None,
            "joules_per_token": energy.joules_per_call / point.tokens if energy and energy.joules_per_call else None,
            "energy_note": energy.note if energy else "no NVML on CPU",
        }


def check_call(layer: nn.Module, x, grad_out, mode: str):
    """One call outside any timing: the output, the input gradient in train mode, and the routing record."""
    if mode == "forward":
        with torch.no_grad():
            out, routing = _split(layer(x))
        return out, None, routing
    x = x.detach().requires_grad_()
    out, routing = _split(layer(x))
    out.backward(grad_out)
    layer.zero_grad(set_to_none=True)
    return out.detach(), x.grad, routing


def _split(result) -> tuple[torch.Tensor, RoutingRecord | None]:
    return result if isinstance(result, tuple) else (result, None)


def timed_call(module: nn.Module, x, grad_out, mode: str) -> tuple[Callable[[], object], Callable[[], None]]:
    """The call that is timed, and the setup run before each call outside the timed region."""
    if mode == "forward":

        def forward():
            with torch.no_grad():
                return module(x)

        return forward, lambda: None
    x_req = x.detach().requires_grad_()

    def train_step():
        out, _ = _split(module(x_req))
        out.backward(grad_out)

    def clear_grads():
        module.zero_grad(set_to_none=True)
        x_req.grad = None

    return train_step, clear_grads


def _release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class _NoBar:
    def update(self, n: int = 1) -> None: ...
    def set_postfix_str(self, s: str) -> None: ...
    def close(self) -> None: ...


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="row", dynamic_ncols=True, file=sys.stderr)
