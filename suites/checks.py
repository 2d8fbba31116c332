"""Checking one row before it is timed: an implementation is called once and compared with the reference (or
skipped, with the reason, when it cannot express the point or cannot fit); a dense baseline is built and
called once. A row that passes becomes a CheckedRow, carrying what its timing and figures need."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

import moe_impls
from analysis import flops
from analysis.balance import balance_columns, experts_touched
from analysis.footprint import Call
from moe_impls import DenseFFN, LayerRecord, MoEWeights, RoutingRecord
from suites.calls import call_for_timing, check_call
from suites.counters import count
from suites.failures import ROW_FAILURES, one_line
from suites.memory import MemoryMeasurement, measure_memory
from suites.reference import error_and_tolerance
from suites.suite_model import Point
from suites.timing import RowCalls


@dataclass(frozen=True)
class PointInputs:
    """What every row of a point shares: its weights, and its input and output gradient (x, grad_out [T, D] in
    the point's dtype, on the device)."""

    point: Point
    weights: MoEWeights
    x: torch.Tensor
    grad_out: torch.Tensor
    call: Call  # what the footprint models need, with the reference routing's largest expert load

    @property
    def mode(self) -> str:
        return self.point.mode


@dataclass(frozen=True)
class Reference:
    """The reference layer and what its one call at the point returned (grad: the input gradient in train mode)."""

    name: str
    layer: nn.Module
    out: torch.Tensor
    grad: torch.Tensor | None
    routing: RoutingRecord | None


@dataclass
class CheckedRow:
    """A row that passed its check and waits for its timing: its copies' calls, and what its figures need."""

    name: str
    columns: dict
    layers: list[nn.Module]  # one per copy; [0] is the checked one
    flops: int
    touched: int  # bytes one call reads: the experts its routing hits and the router (the whole layer for dense)
    weight_bytes: int
    memory: MemoryMeasurement
    pool: str
    graph_ok: bool
    calls: RowCalls | None = None
    earlier: list[list[float]] = field(default_factory=list)


def check_moe(
    name: str, inputs: PointInputs, ref: Reference, skip: str | None, predicted: int | None
) -> dict | CheckedRow:
    """A finished row (skipped, wrong) as a dict or, once the output matched the reference, a CheckedRow.
    `skip` and `predicted` are the point's fit decision for the row (suites/fit.py)."""
    point, weights, x = inputs.point, inputs.weights, inputs.x
    if skip:
        return {"status": "skipped", "error": skip, "predicted_mem_bytes": predicted}
    impl = moe_impls.resolve(name)  # built-ins, peers, <impl>+compile and plug-ins alike
    device = x.device
    layer = impl(weights)
    compile_s = _compile(layer, inputs, device) if impl.compiled else None
    (out, grad, routing), memory = measure_memory(
        lambda: check_call(layer, x, inputs.grad_out, point.mode), device, layer
    )
    extra = {"compile_s": compile_s, "predicted_mem_bytes": predicted}
    if not isinstance(out, torch.Tensor) or out.shape != ref.out.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        return {**extra, "status": "wrong", "error": f"output {got}, expected {tuple(ref.out.shape)} (the input's)"}
    if point.mode == "train" and grad is None:
        return {**extra, "status": "wrong", "error": "no gradient reached the input in train mode"}
    if not isinstance(routing, LayerRecord):  # a plug-in's: its own routing, else the reference's; rows unknown
        routing = LayerRecord.from_routing(routing if routing is not None else ref.routing, computed_rows=None)
    err, tolerance = error_and_tolerance(out, grad, ref.out, ref.grad, point.dtype)
    check = {**extra, "max_abs_err": err, "tolerance": tolerance, **balance_columns(routing)}
    if not err <= tolerance:
        return {**check, "status": "wrong", "error": f"max |out - reference| = {err:.3g} > {tolerance:.3g}"}
    cfg = weights.cfg
    per_expert = weights.expert_bytes() // cfg.num_experts
    touched = experts_touched(routing) * per_expert + weights.router.weight.numel() * x.element_size()
    row_flops = flops.moe_flops(cfg, point.tokens, routing.token_idx_N.numel(), point.mode)
    graph_ok = point.mode == "forward" and bool(getattr(layer, "capturable", False))
    return CheckedRow(name, check, [layer], row_flops, touched, weights.nbytes(), memory, pool="moe", graph_ok=graph_ok)


def _compile(layer: nn.Module, inputs: PointInputs, device: torch.device) -> float:
    """Seconds of the first call, which compiles; timed on its own, outside every measurement."""
    start = time.perf_counter()
    check_call(layer, inputs.x, inputs.grad_out, inputs.mode)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def check_dense(name: str, dense: DenseFFN, inputs: PointInputs, device: torch.device) -> CheckedRow:
    """A dense baseline of the point's shape called once (its memory measured)."""
    point, x = inputs.point, inputs.x
    cfg = point.moe_config()
    weight_bytes = sum(p.numel() * p.element_size() for p in dense.parameters())
    row_flops = flops.dense_flops(cfg.d_model, dense.d_ff, cfg.activation, point.tokens, point.mode)
    _, memory = measure_memory(lambda: check_call(dense, x, inputs.grad_out, point.mode), device, dense)
    graph_ok = point.mode == "forward" and bool(getattr(dense, "capturable", False))
    return CheckedRow(name, {}, [dense], row_flops, weight_bytes, weight_bytes, memory, pool=name, graph_ok=graph_ok)


def counter_columns(layer: nn.Module, inputs: PointInputs) -> dict:
    """Exact counts of one untimed call (suites/counters.py): a gate with no noise, for CI without a GPU."""
    call, reset = call_for_timing(layer, inputs.x, inputs.grad_out, inputs.mode)
    try:
        columns = count(call, reset).columns()
    except ROW_FAILURES as exc:
        return {"counters_note": f"not counted: {one_line(exc)}"}
    reset()
    return {**columns, "counters_note": None}
