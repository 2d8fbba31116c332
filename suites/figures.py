"""A timed row's columns: its statistics, and the figures derived from them against the peaks measured in the
same run (throughput, TFLOP/s, the roofline bound, memory, energy)."""

from __future__ import annotations

from collections.abc import Callable

from analysis import flops
from suites.checks import CheckedRow, PointInputs
from suites.failures import ROW_FAILURES, one_line
from suites.nvml import NVML
from suites.timing import RowTiming


def row_figures(row: CheckedRow, timing: RowTiming, inputs: PointInputs, peaks: dict) -> dict:
    """Statistics and derived figures of a timed row; its memory was measured on its first (checked) call."""
    point, x = inputs.point, inputs.x
    stats = timing.stats
    seconds = stats.median * 1e-3
    peak_tflops = peaks["matmul_tflops"].get(point.dtype)
    bytes_min = flops.min_bytes(row.touched, point.tokens, point.d_model, x.element_size(), point.mode)
    bound_s = max(row.flops / (peak_tflops * 1e12), bytes_min / (peaks["bandwidth_gbs"] * 1e9))
    return {
        "status": "ok",
        "error": None,
        "timer": timing.timer,
        "l2_flushed": timing.l2_flushed,
        "timer_note": timing.note,
        "samples_ms": timing.samples_ms,
        **stats.columns(),
        "tokens_per_s": point.tokens / seconds,
        "flops": row.flops,
        "tflops": row.flops / seconds / 1e12,
        "peak_fraction": row.flops / seconds / 1e12 / peak_tflops if peak_tflops else None,
        "bytes_min": bytes_min,
        "arith_intensity": row.flops / bytes_min,
        "bound_ms": bound_s * 1e3,
        **_memory_columns(row, inputs),
    }


def _memory_columns(row: CheckedRow, inputs: PointInputs) -> dict:
    """The call's peak on top of the weights and input, split into the weight gradients a train call leaves and
    the rest (activations, workspace, the input gradient). Gradients not yet all live at the peak's moment still
    count whole, so the split is floored at 0 and activations are, if anything, under-counted."""
    memory, x = row.memory, inputs.x
    grads = memory.grad_bytes if inputs.mode == "train" else None
    return {
        "mem_kind": memory.kind,
        "peak_mem_bytes": row.weight_bytes + x.numel() * x.element_size() + memory.call_peak_bytes,
        "reserved_mem_bytes": memory.reserved_bytes,
        "weight_bytes": row.weight_bytes,
        "grad_bytes": grads,
        "activation_bytes": max(memory.call_peak_bytes - (grads or 0), 0),
    }


def energy_columns(row: CheckedRow, timing: RowTiming, nvml: NVML, energy_ms: float, tokens: int) -> dict:
    """Joules per call of the very call that was timed (with its reset): the graph's replay where the timer
    replayed one, not the eager call with its launch overhead; or why there is no figure. A failure here is noted,
    never turned into the row's failure."""
    energy_j, note = _joules_per_call(row, timing.replay, nvml, energy_ms)
    return {
        "energy_j": energy_j,
        "joules_per_token": energy_j / tokens if energy_j else None,
        "energy_note": note,
    }


def _joules_per_call(
    row: CheckedRow, replay: Callable[[], object] | None, nvml: NVML, energy_ms: float
) -> tuple[float | None, str | None]:
    if nvml.device.type != "cuda":
        return None, "no NVML on CPU"
    call, reset = replay or row.calls.calls[0], (row.calls.resets or [lambda: None])[0]

    def step() -> None:
        call()
        reset()

    try:
        energy = nvml.measure_energy(step, energy_ms)
    except ROW_FAILURES as exc:
        return None, f"energy loop failed: {one_line(exc)}"
    return energy.joules_per_call, energy.note
