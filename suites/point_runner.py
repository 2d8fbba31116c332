"""Measures the rows of one point: every implementation over one shared set of weights and one input, each
checked against the reference before it is timed, then timed round-robin with the point's other rows and a
canary, on a machine whose steadiness is recorded. Runs inside the worker process (suites/worker.py).

A row's life: check (one call, compared with the reference, suites/checks.py; the shared tensors fingerprinted
before and after, so a row that writes to them is the one that fails) -> timing (cold copies or warm blocks,
suites/copies.py and suites/timing.py; re-timed when the machine was disturbed, suites/watch.py) -> re-check on
a fresh input (a row that returns a cached output after its first call is `wrong`) -> figures
(suites/figures.py).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

import torch

from analysis.footprint import Call
from moe_impls import MoEWeights
from suites import fit
from suites.cache import last_level_cache_bytes
from suites.calls import check_call
from suites.checks import CheckedRow, PointInputs, Reference, check_dense, check_moe, counter_columns
from suites.copies import CopyBudget, build_copies
from suites.failures import ROW_FAILURES, failed_row, failure_status, one_line, release, row_family
from suites.figures import energy_columns, row_figures
from suites.integrity import SharedTensors
from suites.nvml import NVML
from suites.reference import error_and_tolerance, reference_layer
from suites.shape_cache import ShapeCache
from suites.suite_model import Point
from suites.watch import WatchedTimer
from suites.worker import WorkerSpec

Report = Callable[[str, list[str], float], None]  # (stage, rows, seconds allowed) -> None


class PointRunner:
    """Keeps what outlives one point in a worker: peaks, the canary and its start-of-run time, the shape's weights
    and baselines (suites/shape_cache.py)."""

    def __init__(self, spec: WorkerSpec, report: Report | None = None) -> None:
        from suites.peaks import measure_peaks

        self.device, self.seed, self.timing = torch.device(spec.device), spec.seed, spec.timing
        self.report = report or (lambda stage, rows, limit: None)
        self.nvml = NVML(self.device)
        self.llc_bytes, self.llc_source = last_level_cache_bytes(self.device)
        self.budget = CopyBudget(self.device, self.timing, self.llc_bytes)
        self.shapes = ShapeCache(self.device, self.seed)
        self._failed_before = False
        measured = dict.fromkeys(("float32", *spec.dtypes))  # float32 always: the canary is sized from its peak
        self.peaks = spec.peaks
        if self.peaks is None:
            self.peaks = measure_peaks(self.device, [getattr(torch, d) for d in measured])
        self.watch = WatchedTimer(self.budget, self.nvml, self.peaks, spec.canary_ms, spec.sync_ms)

    def describe(self) -> dict:
        return {
            "peaks": self.peaks,
            "canary_ms": self.watch.baseline_ms,
            "sync_ms": self.watch.sync_baseline_ms,
            "llc_bytes": self.llc_bytes,
            "llc_source": self.llc_source,
            "device_name": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None,
            "nvml": self.nvml.info(),
            "malloc_tunables": os.environ.get("GLIBC_TUNABLES"),
        }

    def run(self, point: Point, todo: list[str], note: str | None = None) -> Iterator[dict]:
        """Every row of `todo` at `point`, each yielded as soon as it is final."""
        if self._failed_before:  # a failure's leftovers (frames, cached blocks) must not crowd this point
            release()
        self._failed_before = False
        base = {**point.columns(), "device": self.device.type, "world_size": 1, "cache": self.timing.cache}
        self.report("setup", todo, self.timing.timeout_s)
        try:
            inputs, ref = self._setup(point)
        except ROW_FAILURES as exc:
            self._failed_before = True
            for name in todo:
                yield failed_row(base, name, failure_status(exc), f"point setup: {one_line(exc)}")
            return
        shared = SharedTensors.of({**_named(inputs.weights), "input": inputs.x, "grad_out": inputs.grad_out})
        fits = self.shapes.fit(inputs, todo)
        baselines = self.shapes.baselines_for(inputs, fits)
        pending: list[CheckedRow] = []
        for name in todo:
            row = {**base, "impl": name, "family": row_family(name)}
            row.update(reference=ref.name if row["family"] == "moe" else None, compile_s=None, predicted_mem_bytes=None)
            result = self._check(name, inputs, ref, shared, fits[name], baselines)
            if isinstance(result, CheckedRow):
                result.columns = {**row, **result.columns, **counter_columns(result.layers[0], inputs)}
                pending.append(result)
                continue
            yield {**row, **result}
            if result.get("status") in ("oom", "error"):
                self._failed_before = True
                release()
        if pending:
            yield from self._time(inputs, ref, shared, pending, note)

    def _setup(self, point: Point) -> tuple[PointInputs, Reference]:
        dtype = getattr(torch, point.dtype)
        x, grad_out = self._inputs(point, dtype, self.seed)
        if point.model:
            from suites import model_rows

            inputs = PointInputs(point, self.shapes.block(point.model, dtype), x, grad_out, self._call(point, None))
            return inputs, model_rows.reference(inputs)
        weights = self.shapes.weights(point.moe_config(), dtype)
        ref_name, layer = reference_layer(weights, x)
        ref_out, ref_grad, ref_routing = check_call(layer, x, grad_out, point.mode)
        inputs = PointInputs(point, weights, x, grad_out, self._call(point, ref_routing.tokens_per_expert_E))
        return inputs, Reference(ref_name, layer, ref_out, ref_grad, ref_routing)

    @staticmethod
    def _call(point: Point, tokens_per_expert: torch.Tensor | None) -> Call:
        return fit.call_of(point, fit.max_load(point, tokens_per_expert))

    def _check(
        self, name: str, inputs: PointInputs, ref: Reference, shared: SharedTensors, fits: tuple, baselines: dict
    ) -> dict | CheckedRow:
        """The row checked against the reference; one that wrote to the shared tensors is an error."""
        self.report("check", [name], self.timing.timeout_s)
        try:
            if row_family(name) == "moe" and inputs.point.model:
                from suites.model_rows import check_model_row

                result = check_model_row(name, inputs, ref, *fits)
            elif row_family(name) == "moe":
                result = check_moe(name, inputs, ref, *fits)
            elif isinstance(baselines[name], dict):
                result = baselines[name]  # skipped, or failed to build
            else:
                result = check_dense(name, baselines[name], inputs, self.device)
        except ROW_FAILURES as exc:
            result = {"status": failure_status(exc), "error": one_line(exc)}
        dirty = shared.changed()
        if dirty:
            self._restore(inputs, with_inputs=True)
            return {"status": "error", "error": f"changed the shared {', '.join(dirty)} during its check"}
        return result

    def _time(
        self, inputs: PointInputs, ref: Reference, shared: SharedTensors, pending: list[CheckedRow], note: str | None
    ) -> Iterator[dict]:
        """Cold copies, round-robin timing with the canary (re-timed while disturbed), re-checks, figures."""
        try:
            copies = build_copies(self.budget, inputs, pending)
        except ROW_FAILURES as exc:
            for r in pending:
                yield {**r.columns, "status": failure_status(exc), "error": f"cold copies: {one_line(exc)}"}
            return
        s = self.timing
        limit = len(pending) * (s.budget_ms + s.warmup_ms) / 1e3 * (1 + 2 * s.retimes) + s.timeout_s
        self.report("timing", [r.name for r in pending], limit)
        timings, steadiness = self.watch.time(pending)
        del copies
        dirty = shared.changed()
        culprits: dict[str, str] = {}
        if dirty:
            self._restore(inputs, with_inputs=True)
            culprits = self._find_writer(inputs, shared, pending, dirty)
        checked = [r for r in pending if row_family(r.name) == "moe" and r.name not in culprits]
        fresh = self._fresh_check(inputs.point, ref, checked)
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
                row.update(row_figures(r, timing, inputs, self.peaks))
                row.update(energy_columns(r, timing, self.nvml, self.timing.energy_ms, inputs.point.tokens))
                row["earlier_samples_ms"] = r.earlier or None
                if note:
                    row["timer_note"] = "; ".join(n for n in (timing.note, note) if n)
            except ROW_FAILURES as exc:
                row.update(status=failure_status(exc), error=one_line(exc))
                self._failed_before = True
            yield row

    def _find_writer(
        self, inputs: PointInputs, shared: SharedTensors, pending: list[CheckedRow], dirty: list[str]
    ) -> dict[str, str]:
        """One more call per row on the restored tensors; the rows that change them are to blame."""
        blamed = {}
        for r in pending:
            self.report("check", [r.name], self.timing.timeout_s)
            with contextlib.suppress(*ROW_FAILURES):
                check_call(r.layers[0], inputs.x, inputs.grad_out, inputs.mode)
            if shared.changed():
                blamed[r.name] = f"changed the shared {', '.join(dirty)} while being timed"
                self._restore(inputs, with_inputs=False)
        if not blamed:
            why = f"the shared {', '.join(dirty)} changed while these rows were timed; no single row repeated it"
            return dict.fromkeys((r.name for r in pending), why)
        return blamed

    def _fresh_check(self, point: Point, ref: Reference, rows: list[CheckedRow]) -> dict[str, str]:
        """Every timed row again on a new input: its answer must still be the reference's. Returns the failures."""
        x, grad_out = self._inputs(point, getattr(torch, point.dtype), self.seed + 1)
        ref_out, ref_grad, _ = check_call(ref.layer, x, grad_out, point.mode)
        failures = {}
        for r in rows:
            self.report("check", [r.name], self.timing.timeout_s)
            try:
                out, grad, _ = check_call(r.layers[0], x, grad_out, point.mode)
                err, tolerance = error_and_tolerance(out, grad, ref_out, ref_grad, point.dtype)
                if not err <= tolerance:
                    failures[r.name] = (
                        f"after timing, on a fresh input: max |out - reference| = {err:.3g} > {tolerance:.3g} "
                        "(the timed calls did not compute what the check saw)"
                    )
            except ROW_FAILURES as exc:
                failures[r.name] = f"after timing, on a fresh input: {one_line(exc)}"
        return failures

    def _inputs(self, point: Point, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The input and output gradient, drawn on the device (as the weights are)."""
        gen = torch.Generator(device=self.device).manual_seed(seed)
        shape, where = (point.tokens, point.d_model), dict(device=self.device, dtype=dtype)
        return torch.randn(shape, generator=gen, **where), torch.randn(shape, generator=gen, **where)

    def _restore(self, inputs: PointInputs, with_inputs: bool) -> None:
        """Puts the shared weights (and the input and output gradient) back as the seed made them."""
        if inputs.point.model:
            from suites.model_rows import reinit

            reinit(inputs.weights, inputs, self.seed)
        else:
            inputs.weights.reset_parameters(self.seed)
        with torch.no_grad():
            for b in inputs.weights.buffers():
                b.zero_()
        if with_inputs:
            fresh_x, fresh_g = self._inputs(inputs.point, inputs.x.dtype, self.seed)
            with torch.no_grad():
                inputs.x.copy_(fresh_x)
                inputs.grad_out.copy_(fresh_g)


def _named(weights: MoEWeights) -> dict[str, torch.Tensor]:
    return {**dict(weights.named_parameters()), **dict(weights.named_buffers())}
