"""One expert-parallel measurement point, run on every rank of an initialised process group.

The launcher starts the processes (torchrun or spawn) and the rank loop (suites/ep_run.py) initialises the group
and calls `measure_ep_point` on every rank; this file neither starts processes nor writes results.

The protocol is not the world-size-1 rows' (suites/timing.py), because every rank must make the same calls: a
fixed number of repetitions, each an L2 flush (wherever those rows get one: CUDA, cache = cold, l2_flush), a
barrier and one forward timed stage by stage; no round-robin blocks, re-entry call or stopping rule.
`timer_columns` writes that difference into each row, so a reader comparing the two kinds of row sees it.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from moe_impls.config import MoEConfig
from moe_impls.expert_parallel import EPTraffic, ExpertParallelMoE
from moe_impls.sort_group import SortGroupMoE
from moe_impls.weights import MoEWeights
from suites.cuda_timing import L2Flush
from suites.ep_stages import timed_forward
from suites.schema import STAGES
from suites.timing_settings import TimingSettings


@dataclass(frozen=True)
class EPPointRequest:
    """What every rank measures at one point; all ranks must pass equal requests (they make the same calls)."""

    cfg: MoEConfig
    tokens_per_rank: int
    dtype: torch.dtype
    reps: int  # timed repetitions, each after a barrier
    warmup: int = 2  # untimed forwards; the first is also the output check
    seed: int = 0  # weights are seeded `seed`, rank r's input `seed + 1 + r`
    l2_flush: bool = False  # CUDA only: zero a buffer twice the L2 before each repetition (see `flushes_l2`)


@dataclass(frozen=True)
class _StageSamples:
    seconds: dict[str, list[float]]  # {stage or "total": [seconds per repetition]}
    traffic: EPTraffic  # the last repetition's; every repetition routes the same input, so moves the same rows


@dataclass(frozen=True)
class _OutputCheck:
    max_abs_err: float  # max |EP output - sort_group output| on this rank's tokens
    ref_max_abs: float  # max |sort_group output|: the scale the tolerance is relative to


def _device_for_backend() -> torch.device:
    """The NCCL backend means this rank's current CUDA device; anything else runs on the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@torch.no_grad()
def measure_ep_point(request: EPPointRequest, group: dist.ProcessGroup | None = None) -> dict:
    """Median forward time split (seconds) of the expert-parallel layer and the bytes each rank sent.

    Every rank builds the same seeded weights and keeps its shard; rank r's input is seeded `seed + 1 + r`, so
    ranks route different tokens. A barrier precedes each repetition so that rank skew from the previous one
    does not land in the next dispatch; each repetition is timed stage by stage (`suites.ep_stages`). With
    `request.l2_flush` the L2 is flushed before that barrier, so the flush is done before any clock starts.

    Returns, on every rank, this rank's figures:
        world_size, rank, tokens_per_rank, dtype, reps, device
        samples_s: {stage: [seconds per repetition]} for stages routing, dispatch, compute, combine, total
        median_s: {stage: median seconds}
        rows_sent, rows_received: per destination / source rank (assignments, one row of D each)
        dispatch_bytes_sent, combine_bytes_sent, counts_bytes_sent: bytes that left this rank
        max_abs_err: max |EP output - sort_group output| on this rank's tokens; ref_max_abs: max |sort_group output|
    and `per_rank`: on rank 0 the list of every rank's dict (samples_s included, per_rank not), else None.
    """
    if request.reps < 1:
        raise ValueError(f"measure_ep_point: reps must be >= 1, got {request.reps}")
    group = group if group is not None else dist.group.WORLD
    layer, x, check = _checked_layer(request, group)
    for _ in range(request.warmup - 1):
        layer(x)
    flush = L2Flush(layer.weights.device) if request.l2_flush else None
    point = _rank_figures(request, layer, _time_stages(layer, x, request.reps, group, flush), check)
    gathered = [None] * layer.world_size if layer.rank == 0 else None
    dist.gather_object(point, gathered, dst=dist.get_global_rank(group, 0), group=group)
    return {**point, "per_rank": gathered}


def _checked_layer(
    request: EPPointRequest, group: dist.ProcessGroup
) -> tuple[ExpertParallelMoE, torch.Tensor, _OutputCheck]:
    """The layer, this rank's input and the first forward's output checked against `sort_group`.

    The reference is `sort_group` on the full weights and this rank's own tokens, which the layer equals for
    every routing (decisions are per rank, see `ExpertParallelMoE`); the check needs no gather, so it also holds
    at shapes whose global batch would not fit on one device. Only the shard stays resident afterwards.
    """
    device = _device_for_backend()
    full = MoEWeights(request.cfg, device=device, dtype=request.dtype, seed=request.seed)
    layer = ExpertParallelMoE(full, group=group).eval()
    gen = torch.Generator().manual_seed(request.seed + 1 + layer.rank)
    x = torch.randn(request.tokens_per_rank, request.cfg.d_model, generator=gen).to(device=device, dtype=request.dtype)
    y_ep = layer(x)[0]
    reference = SortGroupMoE(full)(x)[0]
    max_abs_err = float((y_ep.float() - reference.float()).abs().max()) if y_ep.numel() else 0.0
    ref_max_abs = float(reference.abs().max()) if reference.numel() else 0.0
    return layer, x, _OutputCheck(max_abs_err, ref_max_abs)


def _time_stages(
    layer: ExpertParallelMoE,
    x: torch.Tensor,
    reps: int,
    group: dist.ProcessGroup,
    flush: Callable[[], None] | None,
) -> _StageSamples:
    """`reps` forwards timed stage by stage, each after `flush` (when given) and a barrier.

    On NCCL the barrier blocks the host until the current stream, flush included, has run, so every rank's
    clock starts on a flushed L2 and an idle device.
    """
    seconds: dict[str, list[float]] = {stage: [] for stage in (*STAGES, "total")}
    for _ in range(reps):
        if flush is not None:
            flush()
        dist.barrier(group=group)
        timed = timed_forward(layer, x)
        for stage in STAGES:
            seconds[stage].append(timed.stage_s[stage])
        seconds["total"].append(timed.total_s)
    return _StageSamples(seconds, timed.traffic)


def _rank_figures(
    request: EPPointRequest, layer: ExpertParallelMoE, samples: _StageSamples, check: _OutputCheck
) -> dict:
    """This rank's figures as `measure_ep_point` returns them (a plain dict: it is gathered by pickling)."""
    traffic = samples.traffic
    return {
        "world_size": layer.world_size,
        "rank": layer.rank,
        "tokens_per_rank": request.tokens_per_rank,
        "dtype": str(request.dtype).removeprefix("torch."),
        "reps": request.reps,
        "device": layer.weights.device.type,
        "median_s": {stage: statistics.median(values) for stage, values in samples.seconds.items()},
        "rows_sent": list(traffic.rows_sent_R),
        "rows_received": list(traffic.rows_received_R),
        "dispatch_bytes_sent": traffic.dispatch_bytes_sent,
        "combine_bytes_sent": traffic.combine_bytes_sent,
        "counts_bytes_sent": traffic.counts_bytes_sent,
        "max_abs_err": check.max_abs_err,
        "ref_max_abs": check.ref_max_abs,
        "samples_s": samples.seconds,
    }


def flushes_l2(device: torch.device, timing: TimingSettings) -> bool:
    """Whether repetitions start with an L2 flush: where `suites.timing.time_rows` flushes before each call."""
    return device.type == "cuda" and timing.cache == "cold" and timing.l2_flush


def timer_columns(device: torch.device, timing: TimingSettings) -> dict[str, str]:
    """An expert_parallel row's timer, cache and timer_note: the clock, and how the protocol differs from that
    of the world-size-1 rows (suites/timing.py) it is reported beside."""
    cuda = device.type == "cuda"
    clock = "cuda_event marks (one synchronise per forward)" if cuda else "perf_counter marks"
    parts = [
        f"expert_parallel protocol: each repetition is a barrier, then one forward timed by {clock} at its stage "
        "boundaries; the sample is the slowest rank's sum of stages, over exactly timing.min_reps repetitions, "
        "without the round-robin blocks, re-entry call and stopping rule of world-size-1 rows",
        _cache_clause(device, timing),
    ]
    if cuda and timing.cuda_graph:
        parts.append("cuda_graph does not apply: the dispatch reads the per-expert counts on the host")
    return {
        "timer": "cuda_event" if cuda else "perf_counter",
        "cache": timing.cache if cuda else "warm",
        "timer_note": "; ".join(parts),
    }


def _cache_clause(device: torch.device, timing: TimingSettings) -> str:
    if timing.cache == "warm":
        return "cache = warm: every forward reuses one copy of the shard and input, as warm world-size-1 rows do"
    if device.type == "cpu":
        return (
            "l2_flush does not apply on the CPU and no cold copies are built: every forward reuses the rank's one "
            "copy of its shard and input (warm), where cold world-size-1 rows rotate over copies"
        )
    if flushes_l2(device, timing):
        return "L2 flushed before each repetition, outside the timed region, as before each world-size-1 call"
    return "l2_flush = false: no L2 flush, as for the world-size-1 rows"
