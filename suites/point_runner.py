"""Measures the rows of one point: every implementation over one shared set of weights and one input, each
checked against the reference before it is timed, then timed round-robin with the point's other rows and a
canary, on a machine whose steadiness is recorded. Runs inside the worker process (suites/worker.py).

A row's life: check (one call, compared with the reference; the shared tensors fingerprinted before and
after, so a row that writes to them is the one that fails) -> timing (cold copies or warm blocks,
suites/timing.py; re-timed when the machine was disturbed) -> re-check on a fresh input (a row that returns a
cached output after its first call is `wrong`) -> figures.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import torch
from torch import nn

import moe_impls
from moe_impls import MoEWeights, RoutingRecord
from analysis import flops as F
from suites.balance import balance_columns, experts_touched
from suites.cache import last_level_cache_bytes, plan_copies
from suites.counters import count
from suites.integrity import changed, fingerprint
from suites.memory import available_bytes, measure_memory
from suites.nvml import NVML
from suites.spec import Point
from suites.stats import Stats
from suites.steadiness import Thresholds, Window, canary_verdict, cpu_verdict, gpu_verdict
from suites.timing import Timed, Timing, TimingSettings, time_rows

# max |impl - reference| allowed, relative to the reference's largest magnitude
RTOL = {"float32": 1e-4, "bfloat16": 3e-2, "float16": 5e-3}
# dense_all materialises [E, T, H]; above this many bytes the reference is `loop` (tested equal to dense_all)
DENSE_REFERENCE_MAX_BYTES = 1 << 30
# a row whose predicted footprint exceeds this share of the free memory is skipped, never attempted
MEMORY_HEADROOM = 0.8
CANARY = "__canary__"  # the hidden row: a fixed matmul of about CANARY_MS, timed beside every point's rows
CANARY_MS = 1.0
# What a row raises that fails the row, not the process: SystemExit too, so `sys.exit()` in an implementation
# is a recorded failure. KeyboardInterrupt is not caught: Ctrl-C stops the run.
ROW_FAILURES = (Exception, SystemExit)

Report = Callable[[str, list[str], float], None]  # (stage, rows, seconds allowed) -> None


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


def is_oom(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or any(
        s in text for s in ("out of memory", "can't allocate memory", "cannot allocate memory")
    )


def failure_status(exc: BaseException) -> str:
    return "oom" if is_oom(exc) else "error"


@dataclass
class Row:
    """A row that passed its check and waits for its timing: its copies' calls, and what its figures need."""

    name: str
    columns: dict
    layers: list[nn.Module]  # one per copy; [0] is the checked one
    flops: int
    touched: int
    weight_bytes: int
    memory: object
    pool: str
    graph_ok: bool
    timed: Timed | None = None
    earlier: list[list[float]] = field(default_factory=list)


class PointRunner:
    """Keeps what outlives one point in a worker: peaks, the canary and its start-of-run time, the weights."""

    def __init__(
        self,
        device: torch.device,
        seed: int,
        timing: TimingSettings,
        peaks: dict | None,
        canary_ms: float | None,
        dtypes: tuple[str, ...] = ("float32",),
        report: Report | None = None,
    ) -> None:
        from suites.peaks import measure_peaks

        self.device, self.seed, self.timing = device, seed, timing
        self.report = report or (lambda stage, rows, limit: None)
        self.nvml = NVML(device)
        self.thresholds = Thresholds.of(timing)
        self.llc_bytes, self.llc_source = last_level_cache_bytes(device)
        self._weights: tuple[tuple, MoEWeights] | None = None
        self._failed_before = False  # the last point's weights, reused at equal shape
        measured = dict.fromkeys(("float32", *dtypes))  # float32 always: the canary is sized from its peak
        self.peaks = peaks if peaks is not None else measure_peaks(device, [getattr(torch, d) for d in measured])
        self._canary_fns = self._canary()
        self.canary_baseline_ms = canary_ms if canary_ms is not None else self._canary_alone()

    def describe(self) -> dict:
        return {
            "peaks": self.peaks,
            "canary_ms": self.canary_baseline_ms,
            "llc_bytes": self.llc_bytes,
            "llc_source": self.llc_source,
            "device_name": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None,
            "malloc_tunables": os.environ.get("GLIBC_TUNABLES"),
        }

    # ---- one point ------------------------------------------------------------------------------------------
    def run(self, point: Point, todo: list[str], note: str | None = None) -> Iterator[dict]:
        """Every row of `todo` at `point`, each yielded as soon as it is final."""
        if self._failed_before:  # a failure's leftovers (frames, cached blocks) must not crowd this point
            _release()
        self._failed_before = False
        cfg = point.moe_config()
        dtype = getattr(torch, point.dtype)
        base = {**point.columns(), "device": self.device.type, "world_size": 1, "cache": self.timing.cache}
        self.report("setup", todo, self.timing.timeout_s)
        try:
            x, grad_out = self._inputs(point, dtype, self.seed)
            weights = self._point_weights(cfg, dtype)
            ref_name, reference = self._reference_layer(weights, x)
            ref_out, ref_grad, ref_routing = check_call(reference, x, grad_out, point.mode)
        except ROW_FAILURES as exc:
            self._failed_before = True
            for name in todo:
                yield _failed(base, name, failure_status(exc), f"point setup: {one_line(exc)}")
            return
        shared = {**_named(weights), "input": x, "grad_out": grad_out}
        clean = fingerprint(shared)
        pending: list[Row] = []
        for name in todo:
            family = "dense" if name in moe_impls.BASELINES else "moe"
            row = {**base, "impl": name, "family": family, "reference": ref_name if family == "moe" else None}
            row.update(compile_s=None, predicted_mem_bytes=None)
            self.report("check", [name], self.timing.timeout_s)
            try:
                if family == "moe":
                    result = self._check_moe(name, weights, x, grad_out, point, ref_out, ref_grad, ref_routing)
                else:
                    result = self._check_dense(name, x, grad_out, point)
            except ROW_FAILURES as exc:
                result = {"status": failure_status(exc), "error": one_line(exc)}
            dirty = changed(clean, shared)
            if dirty:
                self._restore(weights, x, grad_out, point)
                result = {"status": "error", "error": f"changed the shared {', '.join(dirty)} during its check"}
            if isinstance(result, Row):
                result.columns = {**row, **result.columns, **self._counters(result.layers[0], x, grad_out, point)}
                pending.append(result)
            else:
                yield {**row, **result}
            if isinstance(result, dict) and result.get("status") in ("oom", "error"):
                self._failed_before = True
                _release()
        if not pending:
            return
        yield from self._time(point, pending, weights, x, grad_out, reference, clean, shared, note)

    def _time(self, point, pending: list[Row], weights, x, grad_out, reference, clean, shared, note) -> Iterator[dict]:
        """Cold copies, round-robin timing with the canary (re-timed while disturbed), re-checks, figures."""
        names = [r.name for r in pending]
        try:
            copies = self._build_copies(point, pending, weights, x, grad_out)
        except ROW_FAILURES as exc:
            for r in pending:
                yield {**r.columns, "status": failure_status(exc), "error": f"cold copies: {one_line(exc)}"}
            return
        s = self.timing
        limit = len(pending) * (s.budget_ms + s.warmup_ms) / 1e3 * (1 + 2 * s.retimes) + s.timeout_s
        self.report("timing", names, limit)
        timings, steadiness = self._timed_tries(pending)
        del copies
        dirty = changed(clean, shared)
        culprits: dict[str, str] = {}
        if dirty:
            self._restore(weights, x, grad_out, point)
            culprits = self._find_writer(pending, x, grad_out, point.mode, clean, shared, weights, dirty)
        moe_rows = [r for r in pending if r.pool == "moe" and r.name not in culprits]
        fresh = self._fresh_check(point, reference, moe_rows)
        for r in pending:
            row = {**r.columns, **steadiness, "timer_note": note}
            timing = timings[r.name]
            try:
                if r.name in culprits:
                    raise RuntimeError(culprits[r.name])
                if timing.error is not None:
                    raise timing.error
                if fresh.get(r.name):
                    yield {**row, "status": "wrong", "error": fresh[r.name]}
                    continue
                row.update(self._figures(r, timing, x, point))
                row["earlier_samples_ms"] = r.earlier or None
                if note:
                    row["timer_note"] = "; ".join(n for n in (timing.note, note) if n)
            except ROW_FAILURES as exc:
                row.update(status=failure_status(exc), error=one_line(exc))
                self._failed_before = True
            yield row

    # ---- timing under watch ---------------------------------------------------------------------------------
    def _timed_tries(self, pending: list[Row]) -> tuple[dict[str, Timing], dict]:
        """Times the rows with the canary; while a try is disturbed and tries are left, pauses and times again.
        Earlier tries' samples stay with their rows (`earlier_samples_ms`)."""
        s = self.timing
        rows = {r.name: r.timed for r in pending}
        rows[CANARY] = Timed(self._canary_fns, pool=CANARY, watch=True)
        timed_from = time.time()
        for attempt in range(s.retimes + 1):
            gpu_before = self.nvml.clock_state()
            window = Window().start()
            timings = time_rows(rows, self.device, s)
            window.stop()
            canary = timings.pop(CANARY)
            gpu_cols, gpu_reasons = gpu_verdict(gpu_before, self.nvml.clock_state())
            canary_cols, canary_reasons = canary_verdict(canary.samples_ms, self.canary_baseline_ms, self.thresholds)
            reasons = cpu_verdict(window, self.thresholds) + canary_reasons + gpu_reasons
            if not reasons or attempt == s.retimes:
                break
            for r in pending:
                r.earlier.append(timings[r.name].samples_ms)
            time.sleep(s.retime_pause_s)
        steadiness = {
            "disturbed": bool(reasons),
            "disturbance": reasons or None,
            "retimed": attempt,
            "timing_window_s": window.wall_s,
            "timed_from": timed_from,
            "timed_to": time.time(),
            **window.signals,
            **canary_cols,
            **gpu_cols,
            "signals_missing": window.missing or None,
        }
        return timings, steadiness

    def _canary(self) -> list[Callable[[], object]]:
        """A square fp32 matmul sized from the measured fp32 peak to take about CANARY_MS (the peak is a best
        sample, so a busy start-up does not shrink it), with copies spanning 2 x the LLC in cold CPU mode so that
        it sees the same cache state as the rows beside it."""
        flops = self.peaks["matmul_tflops"]["float32"] * 1e12 * CANARY_MS * 1e-3
        n = max(64, min(16384, round((flops / 2) ** (1 / 3) / 64) * 64))
        a = torch.randn(n, n, device=self.device)
        plan = plan_copies(2 * a.numel() * 4, self.llc_bytes, int(self.timing.cold_max_mb * 2**20) // 8)
        count = plan.copies if self.timing.cache == "cold" and self.device.type == "cpu" else 1
        return [_mm(a, a.clone())] + [_mm(a.clone(), a.clone()) for _ in range(count - 1)]

    def _canary_alone(self) -> float:
        timing = time_rows({CANARY: Timed(self._canary_fns, pool=CANARY)}, self.device, self.timing)[CANARY]
        if timing.error is not None:
            raise timing.error
        return timing.stats.median

    # ---- cold copies ----------------------------------------------------------------------------------------
    def _build_copies(self, point: Point, pending: list[Row], weights: MoEWeights, x, grad_out) -> list:
        """Gives every row its Timed: on CPU in cold mode, a rotation over copies whose other copies span twice
        the LLC (MoE rows share the weights' copies); otherwise the checked layer alone."""
        s = self.timing
        cold_cpu = s.cache == "cold" and self.device.type == "cpu"
        io_bytes = x.numel() * x.element_size() * (2 if point.mode == "train" else 1)
        pools = {r.pool for r in pending}
        budget = int(s.cold_max_mb * 2**20) // max(len(pools), 1)
        moe_copies: list[MoEWeights] = [weights]
        keep: list = []
        moe_rows = [r for r in pending if r.pool == "moe"]
        if cold_cpu and moe_rows:
            # sized by what a call reads (the experts its routing hits), not by what is resident: at one token
            # a call reads 2 of 8 experts, and copies sized by all 8 would leave those 2 in cache
            touched = min(r.touched for r in moe_rows)
            plan = plan_copies(touched + io_bytes, self.llc_bytes, budget * touched // weights.nbytes())
            moe_copies += [copy.deepcopy(weights) for _ in range(plan.copies - 1)]
            moe_note = plan.note
        for r in pending:
            layers, cache_note = r.layers, None
            if cold_cpu and r.pool == "moe":
                impl = moe_impls.resolve(r.name)
                if impl.compiled:
                    cache_note = "warm weights: a compiled row is timed on one copy (copies would recompile)"
                else:
                    layers = [r.layers[0]] + [impl(w) for w in moe_copies[1:]]
                    cache_note = moe_note
            elif cold_cpu:
                plan = plan_copies(r.weight_bytes + io_bytes, self.llc_bytes, budget)
                layers = [r.layers[0]] + [copy.deepcopy(r.layers[0]) for _ in range(plan.copies - 1)]
                cache_note = plan.note
            inputs = [(x, grad_out)] + [(x.clone(), grad_out.clone()) for _ in layers[1:]]
            calls, resets = zip(*(timed_call(layer, xi, gi, point.mode) for layer, (xi, gi) in zip(layers, inputs)))
            r.timed = Timed(calls, resets, pool=r.pool if len(layers) > 1 else r.name, graph_ok=r.graph_ok)
            r.columns.update(cache_copies=len(layers), cache_note=cache_note)
            keep.append((layers, inputs))
        return keep + moe_copies

    # ---- after timing: who wrote, who cached ----------------------------------------------------------------
    def _find_writer(self, pending, x, grad_out, mode, clean, shared, weights, dirty) -> dict[str, str]:
        """One more call per row on the restored tensors; the rows that change them are to blame."""
        blamed = {}
        for r in pending:
            self.report("check", [r.name], self.timing.timeout_s)
            with contextlib.suppress(*ROW_FAILURES):
                check_call(r.layers[0], x, grad_out, mode)
            if changed(clean, shared):
                blamed[r.name] = f"changed the shared {', '.join(dirty)} while being timed"
                self._restore(weights, x, grad_out, None)
        if not blamed:
            why = f"the shared {', '.join(dirty)} changed while these rows were timed; no single row repeated it"
            return dict.fromkeys((r.name for r in pending), why)
        return blamed

    def _fresh_check(self, point: Point, reference: nn.Module, rows: list[Row]) -> dict[str, str]:
        """Every timed row again on a new input: its answer must still be the reference's. Returns the failures."""
        x, grad_out = self._inputs(point, getattr(torch, point.dtype), self.seed + 1)
        ref_out, ref_grad, _ = check_call(reference, x, grad_out, point.mode)
        failures = {}
        for r in rows:
            self.report("check", [r.name], self.timing.timeout_s)
            try:
                out, grad, _ = check_call(r.layers[0], x, grad_out, point.mode)
                err, tolerance = _error(out, grad, ref_out, ref_grad, point.dtype)
                if not err <= tolerance:
                    failures[r.name] = (
                        f"after timing, on a fresh input: max |out - reference| = {err:.3g} > {tolerance:.3g} "
                        "(the timed calls did not compute what the check saw)"
                    )
            except ROW_FAILURES as exc:
                failures[r.name] = f"after timing, on a fresh input: {one_line(exc)}"
        return failures

    # ---- point setup ----------------------------------------------------------------------------------------
    def _inputs(self, point: Point, dtype: torch.dtype, seed: int):
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(point.tokens, point.d_model, generator=gen).to(self.device, dtype)
        grad_out = torch.randn(point.tokens, point.d_model, generator=gen).to(self.device, dtype)
        return x, grad_out

    def _point_weights(self, cfg, dtype: torch.dtype) -> MoEWeights:
        """The point's weights; the previous point's when the shape and dtype are equal (only tokens, mode or
        routing changed), so a sweep over token counts builds them once."""
        key = (cfg.d_model, cfg.d_ff, cfg.num_experts, cfg.activation, cfg.router, dtype, self.seed)
        if self._weights is not None and self._weights[0] == key:
            weights = self._weights[1]
            weights.cfg = cfg  # same tensors; routing settings (top_k, capacity, synthetic skew) are the point's
            return weights
        self._weights = None
        _release()
        weights = MoEWeights(cfg, device=self.device, dtype=dtype, seed=self.seed)
        self._weights = (key, weights)
        return weights

    def _restore(self, weights: MoEWeights, x, grad_out, point: Point | None) -> None:
        """Puts the shared tensors back as the seed made them, after a row wrote to them."""
        weights.reset_parameters(self.seed)
        with torch.no_grad():
            for b in weights.buffers():
                b.zero_()
        if point is not None:
            fresh_x, fresh_g = self._inputs(point, x.dtype, self.seed)
            with torch.no_grad():
                x.copy_(fresh_x)
                grad_out.copy_(fresh_g)

    def _reference_layer(self, weights: MoEWeights, x) -> tuple[str, nn.Module]:
        cfg = weights.cfg
        dense_bytes = cfg.num_experts * x.shape[0] * cfg.expert_in_features * x.element_size()
        name = moe_impls.REFERENCE if dense_bytes <= DENSE_REFERENCE_MAX_BYTES else "loop"
        return name, moe_impls.get(name)(weights)

    # ---- checking one row -----------------------------------------------------------------------------------
    def _check_moe(self, name, weights: MoEWeights, x, grad_out, point: Point, ref_out, ref_grad, ref_routing):
        """A finished row (skipped, wrong) as a dict or, once the output matched the reference, a Row."""
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
        err, tolerance = _error(out, grad, ref_out, ref_grad, point.dtype)
        check = {**extra, "max_abs_err": err, "tolerance": tolerance, **balance_columns(routing)}
        if not err <= tolerance:
            return {**check, "status": "wrong", "error": f"max |out - reference| = {err:.3g} > {tolerance:.3g}"}
        cfg = weights.cfg
        per_expert = weights.expert_bytes() // cfg.num_experts
        touched = experts_touched(routing) * per_expert + weights.router.weight.numel() * x.element_size()
        flops = F.moe_flops(cfg, point.tokens, routing.token_idx_N.numel(), point.mode)
        graph_ok = point.mode == "forward" and bool(getattr(layer, "capturable", False))
        return Row(name, check, [layer], flops, touched, weights.nbytes(), memory, "moe", graph_ok)

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

    def _check_dense(self, name, x, grad_out, point: Point) -> Row:
        cfg = point.moe_config()
        dense = moe_impls.BASELINES[name](cfg, device=self.device, dtype=x.dtype, seed=self.seed)
        weight_bytes = sum(p.numel() * p.element_size() for p in dense.parameters())
        flops = F.dense_flops(cfg.d_model, dense.d_ff, cfg.activation, point.tokens, point.mode)
        _, memory = measure_memory(lambda: check_call(dense, x, grad_out, point.mode), self.device)
        graph_ok = point.mode == "forward" and bool(getattr(dense, "capturable", False))
        return Row(name, {}, [dense], flops, weight_bytes, weight_bytes, memory, name, graph_ok)

    def _counters(self, layer: nn.Module, x, grad_out, point: Point) -> dict:
        """Exact counts of one untimed call (suites/counters.py): a gate with no noise, for CI without a GPU."""
        call, reset = timed_call(layer, x, grad_out, point.mode)
        try:
            columns = count(call, reset).columns()
        except ROW_FAILURES as exc:
            return {"counters_note": f"not counted: {one_line(exc)}"}
        reset()
        return {**columns, "counters_note": None}

    # ---- figures --------------------------------------------------------------------------------------------
    def _figures(self, r: Row, timing: Timing, x, point: Point) -> dict:
        """Statistics and derived figures of a timed row; its memory was measured on its first (checked) call."""
        stats: Stats = timing.stats
        energy_j, energy_note = self._energy(r)
        seconds = stats.median * 1e-3
        peak_tflops = self.peaks["matmul_tflops"].get(point.dtype)
        bytes_min = F.min_bytes(r.touched, point.tokens, point.d_model, x.element_size(), point.mode)
        bound_s = max(r.flops / (peak_tflops * 1e12), bytes_min / (self.peaks["bandwidth_gbs"] * 1e9))
        input_bytes = x.numel() * x.element_size()
        return {
            "status": "ok",
            "error": None,
            "timer": timing.timer,
            "timer_note": timing.note,
            "samples_ms": timing.samples_ms,
            **stats.columns(),
            "tokens_per_s": point.tokens / seconds,
            "flops": r.flops,
            "tflops": r.flops / seconds / 1e12,
            "peak_fraction": r.flops / seconds / 1e12 / peak_tflops if peak_tflops else None,
            "bytes_min": bytes_min,
            "arith_intensity": r.flops / bytes_min,
            "bound_ms": bound_s * 1e3,
            "mem_kind": r.memory.kind,
            "peak_mem_bytes": r.weight_bytes + input_bytes + r.memory.call_peak_bytes,
            "reserved_mem_bytes": r.memory.reserved_bytes,
            "weight_bytes": r.weight_bytes,
            "activation_bytes": r.memory.call_peak_bytes,
            "energy_j": energy_j,
            "joules_per_token": energy_j / point.tokens if energy_j else None,
            "energy_note": energy_note,
        }

    def _energy(self, r: Row) -> tuple[float | None, str | None]:
        """Joules per call of the very call that was timed (with its reset), or why there is no figure; a
        failure here is noted, never turned into the row's failure."""
        if self.device.type != "cuda":
            return None, "no NVML on CPU"
        call, reset = r.timed.calls[0], (r.timed.resets or [lambda: None])[0]

        def step() -> None:
            call()
            reset()

        try:
            energy = self.nvml.measure_energy(step, self.timing.energy_ms)
        except ROW_FAILURES as exc:
            return None, f"energy loop failed: {one_line(exc)}"
        return energy.joules_per_call, energy.note


def _mm(a: torch.Tensor, b: torch.Tensor) -> Callable[[], object]:
    return lambda: torch.mm(a, b)


def _named(weights: MoEWeights) -> dict[str, torch.Tensor]:
    return {**dict(weights.named_parameters()), **dict(weights.named_buffers())}


def _error(out, grad, ref_out, ref_grad, dtype: str) -> tuple[float, float]:
    """Largest deviation from the reference (the input gradient rescaled to the output's scale) and its limit."""
    scale = max(float(ref_out.abs().max()) if ref_out.numel() else 0.0, 1e-6)
    err = float((out.float() - ref_out.float()).abs().max()) if out.numel() else 0.0
    if grad is not None and ref_grad is not None and grad.numel():
        grad_scale = max(float(ref_grad.abs().max()), 1e-6)
        err = max(err, float((grad.float() - ref_grad.float()).abs().max()) * scale / grad_scale)
    return err, RTOL[dtype] * scale


def _failed(base: dict, name: str, status: str, error: str) -> dict:
    family = "dense" if name in moe_impls.BASELINES else "moe"
    return {**base, "impl": name, "family": family, "status": status, "error": error}


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
    """The call that is timed, and the reset run after each call outside the timed region (train mode drops
    the gradients there, so none stays resident while the point's other rows run)."""
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
