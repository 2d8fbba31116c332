"""The results format: `run.json` (one per run) and `results.jsonl` (one row per implementation x point).

Every column is listed here with its unit and meaning; the README links to this file. Rows are tidy:
`pandas.read_json(path, lines=True)` loads a run. Floats are written at full precision; absent values are null.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from moe_impls.dense import DENSE_BASELINES  # the `impl` of rows whose family is 'dense'

SCHEMA_VERSION = 1
EP_IMPL = "expert_parallel"  # the `impl` of rows run on every rank of a process group (suites/ep_run.py)
STAGES = ("routing", "dispatch", "compute", "combine")  # keys of an expert_parallel row's split_ms, in order

STATUSES = ("ok", "wrong", "oom", "error", "skipped", "timeout")

RESULT_COLUMNS: dict[str, str] = {
    # identity of the point
    "point_id": "stable hash of the point's parameters (shape, dtype, mode, routing); equal across runs",
    "impl": f"implementation or baseline name (loop, padded, sort_group, dense_all, {', '.join(DENSE_BASELINES)}, ...)",
    "family": f"'moe' for MoE implementations, 'dense' for the dense baselines ({', '.join(DENSE_BASELINES)})",
    "tokens": "tokens per call (T); expert_parallel rows: tokens per rank (each rank routes its own batch)",
    "d_model": "hidden size (D)",
    "d_ff": "hidden size of one expert (F)",
    "num_experts": "experts (E)",
    "top_k": "experts per token (k)",
    "activation": "'swiglu' or 'gelu'",
    "dtype": "'float32', 'bfloat16' or 'float16'",
    "mode": "'forward' or 'train' (forward + backward)",
    "router": "learned router kind (softmax_topk, noisy_topk, sigmoid_topk, expert_choice)",
    "routing": "router kind, or the synthetic skew that overrode its choice (uniform, zipf1.2, hot0.5, collapse); "
    "'model' for a model's own block (its router)",
    "model": "the transformers model_type or config.json whose own MoE block the row ran (null for a shape); the "
    "row's impl is then the experts implementation, and eager its reference",
    "capacity_factor": "capacity factor, null = dropless",
    "device": "'cpu' or 'cuda'",
    "world_size": "processes the point ran on (1 unless expert parallel)",
    # outcome
    "status": "ok | wrong (output differs from the reference; never timed) | oom | error | skipped | timeout (the "
    "row's setup, check or timing ran past timing.timeout_s; recorded, and the sweep went on)",
    "error": "one-line reason when status is not ok, else null",
    "max_abs_err": "largest |output - reference output| over the point's input (null for dense baselines)",
    "tolerance": "the max_abs_err allowed for this dtype and output scale",
    # timing (milliseconds per call)
    "timer": "perf_counter (CPU), cuda_event, or cuda_graph (launch overhead removed)",
    "l2_flushed": "true when a buffer twice the L2 size was zeroed before every timed call (CUDA, cache = cold)",
    "samples_ms": "every timed repetition, in order",
    "n_samples": "number of timed repetitions",
    "latency_ms_median": "median of samples_ms",
    "latency_ms_mean": "mean of samples_ms",
    "latency_ms_min": "minimum of samples_ms",
    "latency_ms_p10": "10th percentile (linear interpolation)",
    "latency_ms_p90": "90th percentile",
    "latency_ms_p99": "99th percentile",
    "latency_ms_iqr": "interquartile range p75 - p25",
    "rel_iqr": "latency_ms_iqr / latency_ms_median: the noise the stopping rule looked at",
    "compile_s": "<impl>+compile rows: wall seconds of the first call (torch.compile's tracing and code generation "
    "plus one run), measured apart from every timed sample; null for eager rows",
    # derived throughput
    "tokens_per_s": "tokens / median latency (expert_parallel: global_tokens / median latency)",
    "flops": "floating-point operations per call, counted analytically from the assigned tokens (see analysis/flops.py)",
    "tflops": "flops / median latency / 1e12",
    "peak_fraction": "tflops / the matmul peak measured on this device in this dtype at the start of the run",
    "bytes_min": "bytes a call must move at least: weights of the experts the routing touched + input and output",
    "arith_intensity": "flops / bytes_min (FLOP per byte), the roofline's x axis",
    "bound_ms": "roofline lower bound max(flops / peak, bytes_min / bandwidth) with this run's measured peaks",
    # memory
    "mem_kind": "'cuda' (torch.cuda peak stats) or 'cpu' (torch profiler memory events); null when not measured",
    "peak_mem_bytes": "peak bytes allocated during one call, weights and input included",
    "reserved_mem_bytes": "CUDA: the most bytes the caching allocator held reserved during one call beyond what it "
    "held before it, with its cache emptied first (max_memory_reserved after a reset - memory_reserved before): "
    "the segments the call needed from the driver, allocator rounding and fragmentation included, beyond those "
    "holding live tensors; 0 when the call fit in their free space; CPU: null",
    "weight_bytes": "bytes of the layer's parameters (all experts resident)",
    "grad_bytes": "train: bytes of the weight gradients one call left (the p.grad tensors of the parameters it "
    "reached; the runner drops them after the call); forward: null",
    "activation_bytes": "peak_mem_bytes - weight_bytes - input bytes - grad_bytes (train): activations, workspace "
    "and, in train mode, the input gradient; floored at 0; in train mode, if anything, an under-count, as "
    "grad_bytes counts whole though not every gradient may be live at the peak",
    "predicted_mem_bytes": "bytes one call was predicted to allocate beyond weights and input, where an "
    "implementation's footprint is known (hf_batched_mm); a row whose prediction exceeds the free memory is "
    "skipped with it, so the cost is on record without running it; null when not predicted",
    # load balance (MoE rows; from the routing of the timed input)
    "tokens_per_expert": "list, assignments each expert computed",
    "load_cv": "coefficient of variation of tokens_per_expert (population std / mean)",
    "load_max_over_mean": "max / mean of tokens_per_expert",
    "dropped_fraction": "assignments dropped by capacity / assignments chosen",
    "importance_cv2": "CV^2 of the per-expert sum of gate values (Shazeer 2017)",
    "routing_entropy": "mean over tokens of the entropy of the router distribution (nats)",
    "computed_rows": "rows the expert matmuls computed (padding and dense_all's idle rows included)",
    "padded_fraction": "1 - assignments / computed_rows: work spent on padding or on unrouted rows",
    # energy
    "energy_j": "NVML total-energy counter difference over the timed loop / repetitions (J per call), null if unavailable",
    "joules_per_token": "energy_j / tokens",
    "energy_note": "why energy is null (no NVML, counter unsupported, too short to move the counter)",
    # cache state (suites/timing.py, suites/cache.py)
    "cache": "'cold' (every call's weights and input out of cache) or 'warm' (calls back to back on one copy)",
    "cache_copies": "copies of the row's weights and input the calls rotated over (CPU, cold); 1 otherwise",
    "cache_read_mb": "MB of an eviction buffer read before each call, outside the timed region (CPU, cold), where "
    "the copies that fit in cold_max_mb and 64 do not span 2 x the LLC by themselves; 0 otherwise",
    "cache_note": "why the row is not fully in the cache state asked for (a compiled row is timed on one copy)",
    "timer_note": "how the timing differs from the protocol (eager instead of a CUDA graph; timed alone after a "
    "worker was lost while the point's rows were timed together)",
    "reference": "implementation whose output this row was checked against (dense_all, or loop for large points)",
    # steadiness of the machine during the point's timing window (suites/steadiness.py); equal for its rows
    "disturbed": "true when a signal passed its [timing] threshold in the last try; such a number is no finding",
    "disturbance": "list, one line per signal past its threshold: value and threshold",
    "retimed": "tries before the one kept (a disturbed try is timed again, up to timing.retimes)",
    "earlier_samples_ms": "list of the samples_ms of each earlier, disturbed try (kept, never thrown away)",
    "timing_window_s": "wall seconds of the kept try's round-robin timing window",
    "timed_from": "unix time the point's first try began (so a disturbance can be matched to the points it hit)",
    "timed_to": "unix time the point's last try ended",
    "cpu_pressure_ms": "ms in the window in which some runnable task waited for a CPU (/proc/pressure/cpu)",
    "steal_fraction": "steal jiffies / all jiffies in the window (/proc/stat): CPU time the hypervisor took",
    "invol_ctx_switches": "times the process was preempted in the window (getrusage ru_nivcsw)",
    "cpu_over_wall": "process CPU seconds / wall seconds in the window (up to the thread count)",
    "loadavg_before": "1-minute load average before the window (recorded only: it lags by a minute)",
    "loadavg_after": "1-minute load average after the window",
    "canary_ms": "median ms of the canary (a fixed matmul of about 1 ms timed beside the rows) in the window",
    "canary_rel_iqr": "IQR / median of the canary in the window",
    "canary_drift": "canary_ms / canary_baseline_ms - 1 (disturbed above disturb_canary_drift; below it, the "
    "baseline was the slowed one and this window's clean median becomes the baseline of the points after it)",
    "canary_baseline_ms": "the canary's median the window was judged against: its best of three windows alone at "
    "the start of the run, or a later clean window's if that was faster by more than disturb_canary_drift",
    "sync_ms": "median ms of the thread-sync probe (20 parallel adds of one grain per thread, timed beside the rows: "
    "how fast this process's CPUs reach each other, which depends on where the host placed them); null on CUDA "
    "and with one thread",
    "sync_rel_iqr": "IQR / median of the thread-sync probe in the window",
    "sync_drift": "sync_ms / sync_baseline_ms - 1 (disturbed above disturb_sync_drift; below it, as for the canary, "
    "this window's clean median becomes the baseline of the points after it)",
    "sync_baseline_ms": "the thread-sync probe's median the window was judged against, found as the canary's",
    "gpu_throttle": "list of NVML clock-event reasons seen before or after the window (power cap, thermal, ...)",
    "sm_clock_fraction": "SM clock / its maximum after the window (NVML)",
    "temperature_c": "GPU temperature after the window (NVML)",
    "power_w": "GPU power draw after the window (NVML)",
    "signals_missing": "{signal: why it is null} for the signals this machine does not provide",
    # deterministic counters (suites/counters.py: one untimed call; exact, equal on every run of the same code and
    # input, so `moe-bench compare --metric counters` gates on them without noise; <impl>+compile rows count the
    # eager code, as torch.compile steps aside under a dispatch mode; null when not counted)
    "counted_flops": "FLOPs torch's FlopCounterMode counted in one call (matmuls only, 2 per multiply-add, grouped "
    "GEMMs included): padding and dense_all's idle rows count, elementwise work does not; `flops` is the analytic count",
    "aten_ops": "ATen operator calls dispatched by one call (views, in-place ops and the backward included)",
    "launch_ops": "the aten_ops that do device work, neither views nor bare allocations (empty*): on a GPU each is "
    "at least one kernel launch or copy, what a step pays in launches without a CUDA graph",
    "host_syncs": "times one call made the host wait for a device value: item()/tolist()/bool()/int() of a tensor, "
    "ops whose output size depends on values (nonzero, torch.where(cond), x[mask], unique, bincount, "
    "repeat_interleave without output_size) and, on CUDA only, blocking host-device copies",
    "alloc_bytes": "bytes of the new tensor storages one call's ops returned (logical sizes, before the allocator "
    "rounds them; kernel workspace excluded)",
    "grouped_mm_calls": "aten._grouped_mm ops one call ran, backward included (0: sort_group took its fallback loop)",
    "counters_note": "why the counters are null (the counting modes failed on this row's call)",
}

# Extra columns of `expert_parallel` rows (suites/ep_run.py), one row per point and world size. Kept apart from
# RESULT_COLUMNS because they are text, lists and dicts, which the generic loaders coerce to numbers. Such a row's
# point_id also hashes the world size; its samples_ms are, per repetition, the slowest rank's forward (a barrier
# starts each repetition), over exactly timing.min_reps repetitions (every rank must make the same calls). Its
# timer, cache and timer_note say how that protocol differs from the world-size-1 rows' (suites/ep_bench.py).
EP_COLUMNS: dict[str, str] = {
    "backend": "torch.distributed backend: 'gloo' (CPU) or 'nccl' (CUDA)",
    "global_tokens": "tokens x world_size: the batch all ranks routed together",
    "split_ms": "{routing, dispatch, compute, combine}: the slowest rank's median ms per stage (see moe_impls/expert_parallel.py)",
    "rank_split_ms": "{stage: [median ms of each rank]}",
    "rank_latency_ms": "list, each rank's median forward ms",
    "rank_rows_computed": "list, rows (assignments) each rank's experts computed, from all ranks",
    "rank_dispatch_bytes": "list, bytes that left each rank in the dispatch all-to-all (its own share excluded)",
    "rank_combine_bytes": "list, bytes that left each rank in the combine all-to-all",
    "rank_bytes_sent": "list, dispatch + combine + per-expert count exchange bytes that left each rank per forward",
    "rank_imbalance": "max / mean of rank_rows_computed: the busiest rank's load, which sets the pace",
    "compute_imbalance": "max / mean of the ranks' median expert-compute ms",
}

# run.json["ep_model"] (written after each expert-parallel launch; a dict with "error" when it cannot be fitted)
EP_MODEL_KEYS: dict[str, str] = {
    "link": "{bandwidth_Bps, latency_s}: alpha-beta fit of one all-to-all to every multi-rank row (analysis/ep_costs.py)",
    "fit_rmse_s": "root mean square residual of that fit, seconds",
    "fit_points": "stage times fitted (a dispatch and a combine per row)",
    "fit_world_sizes": "world sizes whose rows were fitted",
    "flops_per_s": "expert FLOP rate fitted to the slowest rank's compute time",
    "comm_error_by_world_size": "{world size: {points, mean_abs_err_ms, mean_abs_rel_err}} of predicted dispatch + combine",
    "points": "per expert_parallel row: point_id, measured_* and predicted_* dispatch/combine/compute ms, compute_to_comm",
    "holdout": "the same fit on the smallest multi-rank world size only, and its errors at every world size",
}

# How the latency summary columns derive from samples_ms: the one definition for the runner that writes them
# (suites/stats.py) and for the loader that fills them in where a row omits them (reports/load.py).
LATENCY_SUMMARY_COLUMNS = tuple(f"latency_ms_{s}" for s in ("median", "mean", "min", "p10", "p90", "p99", "iqr"))


def latency_summary(samples_ms_RS: np.ndarray) -> dict[str, np.ndarray]:
    """Each LATENCY_SUMMARY_COLUMNS column of R rows from their S samples each: [R, S] ms -> {column: [R]}.

    Quantiles interpolate linearly between order statistics (numpy's default, type 7); IQR is p75 - p25.
    """
    p10, p25, p50, p75, p90, p99 = np.percentile(samples_ms_RS, [10, 25, 50, 75, 90, 99], axis=1)
    mean, low = np.mean(samples_ms_RS, axis=1), np.min(samples_ms_RS, axis=1)
    return dict(zip(LATENCY_SUMMARY_COLUMNS, (p50, mean, low, p10, p90, p99, p75 - p25)))


def is_finite_number(value: object) -> bool:
    """A JSON or TOML number (true and false are not numbers there) that is neither NaN nor infinite."""
    return type(value) in (int, float) and math.isfinite(value)


def is_positive_number(value: object) -> bool:
    """What every latency column must hold: a finite number above zero (a negative median would win every table)."""
    return is_finite_number(value) and value > 0


# The canary columns' verdict over a whole run, shared by the runner's summary and the reports: a window is
# judged against the baseline the worker held then, and a clean, faster window lowers it (suites/watch.py).


def lowers_baseline(canary_ms: float | None, baseline_ms: float | None, limit: float, disturbed: bool) -> bool:
    """A clean window whose canary beat the baseline by more than the drift limit: the baseline was timed on a
    slowed machine, and this window's median replaces it for the windows after it."""
    return not disturbed and canary_ms is not None and bool(baseline_ms) and canary_ms < baseline_ms * (1 - limit)


def run_baseline_ms(windows: Iterable[tuple[float | None, float | None, bool]], limit: float) -> float | None:
    """The run's last canary baseline, from each window's (canary_ms, canary_baseline_ms, disturbed)."""
    windows = list(windows)
    lowered = [c for c, b, d in windows if lowers_baseline(c, b, limit, d)]
    return min([b for _, b, _ in windows if b] + lowered, default=None)


def late_canary_reason(
    canary_ms: float | None, baseline_ms: float | None, final_ms: float | None, limit: float
) -> str | None:
    """Why a window judged against a baseline that a later window lowered was disturbed after all: its canary
    is more than the limit above the lowered one (and was not already above its own). None when it is not."""
    if canary_ms is None or not baseline_ms or not final_ms or baseline_ms <= final_ms:
        return None
    drift = canary_ms / final_ms - 1
    if drift <= limit or canary_ms > baseline_ms * (1 + limit):
        return None
    return (
        f"canary: {canary_ms:.3g} ms vs {final_ms:.3g} ms, the run's baseline once a later clean window lowered it "
        f"({drift:+.0%}, limit +{limit:.0%})"
    )
