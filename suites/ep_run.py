"""Expert-parallel suites on every rank: measure each point, and on rank 0 write its row and run.json.

The ranks were started by torchrun, directly or through `suites.ep_launch`. On every rank: one process group
(gloo on the CPU with one thread per rank; NCCL on CUDA, each rank on the GPU LOCAL_RANK), `TIMEOUT_S` on every
collective so that a hung peer ends in an error, not a hang. At each point all ranks call
`suites.ep_bench.measure_ep_point`; rank 0 gathers the per-rank figures and writes one `expert_parallel` row
(columns in `suites.schema.EP_COLUMNS`). `tokens` is tokens per rank. The row's point_id also hashes the world
size, so the 1, 2 and 4-rank rows of one shape are distinct rows of one results file.

At world size 1, rank 0 first runs the suite's single-process implementations and baselines through the
`Runner` at the same points (the 1-rank references); larger launches measure only `expert_parallel`.

A failing rank prints one line naming itself and the point and exits non-zero; torchrun then stops the other
ranks (and a rank that hangs instead is ended by the collective timeout). After each launch rank 0 refits the
cost model to every expert-parallel row in the directory (`suites.ep_model`).
"""

from __future__ import annotations

import hashlib
import os
import statistics
import sys
import traceback
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from analysis import flops
from suites import ep_bench, ep_model
from suites.environment import now as _now
from suites.environment import run_meta
from suites.failures import one_line
from suites.reference import tolerance_for
from suites.results import ResultsWriter, read_run_meta, write_run_meta
from suites.runner import Runner
from suites.schema import EP_IMPL, STAGES
from suites.stats import Stats
from suites.suite_model import Point, Suite
from suites.timing_settings import TimingSettings

# Every collective; a peer that stops answering ends the run after this long. MOE_BENCH_EP_TIMEOUT_S overrides
# it (the tests use a few seconds; a GPU shape whose one point takes minutes needs more).
TIMEOUT_S = float(os.environ.get("MOE_BENCH_EP_TIMEOUT_S", 120))
WARMUP_CALLS = 2  # the first is also the correctness check (see measure_ep_point)


def torchrun_env() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when this process was started by torchrun, else None."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))


@dataclass(frozen=True)
class EPRun:
    """One `moe-bench run` of a suite, as every rank of the launch runs it."""

    suite: Suite
    device: torch.device  # as asked for; on CUDA each rank takes the GPU LOCAL_RANK
    out: Path
    impls: tuple[str, ...]
    baselines: tuple[str, ...]
    progress: bool


@dataclass(frozen=True)
class RankPlace:
    """Where this process sits in the launch."""

    rank: int
    world_size: int
    backend: str  # 'gloo' or 'nccl'
    device: torch.device  # this rank's own


def _this_rank(device: torch.device) -> RankPlace:
    """This torchrun rank's place, its device chosen and its threads set before the process group starts."""
    rank, world_size, local_rank = torchrun_env()
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(1)  # one core per rank: 2 ranks on 2 cores do not oversubscribe
    return RankPlace(rank, world_size, "nccl" if device.type == "cuda" else "gloo", device)


def run_rank(job: EPRun) -> int:
    """Run `job` on this torchrun rank at the launch's world size; returns the process exit status."""
    where = _this_rank(job.device)
    if where.world_size == 1:
        single = [n for n in job.impls if n != EP_IMPL]
        if single or job.baselines:
            Runner(job.suite, where.device, job.out, single, list(job.baselines), progress=job.progress).run()
    if EP_IMPL not in job.impls:
        return 0
    dist.init_process_group(where.backend, timeout=timedelta(seconds=TIMEOUT_S))
    try:
        _measure_points(job, where)
        if where.rank == 0:
            ep_model.store_model(job.out, finished=_now())
        dist.barrier()
    except Exception as exc:
        print(f"moe-bench: rank {where.rank} of {where.world_size}: {one_line(exc)}", file=sys.stderr, flush=True)
        if os.environ.get("MOE_BENCH_TRACEBACK"):
            traceback.print_exc()
        os._exit(1)  # skip the process-group teardown, which would wait on the peers; torchrun stops them
    dist.destroy_process_group()
    return 0


def _measure_points(job: EPRun, where: RankPlace) -> None:
    suite = job.suite
    writer = ResultsWriter(job.out) if where.rank == 0 else None
    todo = [None]
    if writer is not None:
        todo = [
            [i for i, p in enumerate(suite.points) if (ep_point_id(p, where.world_size), EP_IMPL) not in writer.done]
        ]
        _write_meta(suite, where.device, job.out, where.backend)
    dist.broadcast_object_list(todo, src=0)
    try:
        for i in todo[0]:
            point = suite.points[i]
            at = f"point {point.shape} T={point.tokens} {point.dtype} {point.routing} on {where.world_size} rank(s)"
            request = ep_bench.EPPointRequest(
                point.moe_config(),
                point.tokens,
                getattr(torch, point.dtype),
                reps=max(suite.timing.min_reps, 1),
                warmup=WARMUP_CALLS,
                seed=suite.seed,
                l2_flush=ep_bench.flushes_l2(where.device, suite.timing),
            )
            try:
                result = ep_bench.measure_ep_point(request)
            except Exception as exc:
                raise RuntimeError(f"{at}: {one_line(exc)}") from exc
            if writer is not None:
                row = ep_row(point, where, result["per_rank"], suite.timing)
                writer.write(row)
                if job.progress:
                    print(f"moe-bench: {at}: {row['latency_ms_median']:.3g} ms", file=sys.stderr, flush=True)
    finally:
        if writer is not None:
            writer.close()


def _write_meta(suite: Suite, device: torch.device, out: Path, backend: str) -> None:
    """run.json: kept from an earlier launch into the same directory, else started here; the launch is appended."""
    meta = read_run_meta(out) if (out / "run.json").exists() else run_meta(suite, device, peaks={})
    launches = meta.setdefault("ep_launches", [])
    launches.append({"world_size": dist.get_world_size(), "backend": backend, "started": _now()})
    meta["finished"] = None
    write_run_meta(out, meta)


def ep_point_id(point: Point, world_size: int) -> str:
    """The point's id with the world size hashed in: one row per (point, world size) in one results file."""
    return hashlib.sha1(f"{point.point_id}/world_size={world_size}".encode()).hexdigest()[:12]


def ep_row(point: Point, where: RankPlace, per_rank: list[dict], timing: TimingSettings) -> dict:
    """One results row from every rank's `measure_ep_point` figures (rank 0's gathered list), timed under `timing`."""
    world_size, device = where.world_size, where.device
    reps = len(per_rank[0]["samples_s"]["total"])
    # A barrier starts each repetition, so a repetition ends when its slowest rank does: that is the pace.
    pace_ms = [max(p["samples_s"]["total"][i] for p in per_rank) * 1e3 for i in range(reps)]
    stats = Stats.of(pace_ms)
    slowest = max(per_rank, key=lambda p: p["median_s"]["total"])
    rows_computed = [sum(p["rows_received"]) for p in per_rank]
    compute_ms = [p["median_s"]["compute"] * 1e3 for p in per_rank]
    cfg = point.moe_config()
    forward_flops = sum(flops.moe_flops(cfg, point.tokens, sum(p["rows_sent"]), "forward") for p in per_rank)
    seconds = stats.median * 1e-3
    err = max(p["max_abs_err"] for p in per_rank)
    tolerance = tolerance_for(point.dtype, max(p["ref_max_abs"] for p in per_rank))
    ok = err <= tolerance
    return {
        **point.columns(),
        "point_id": ep_point_id(point, world_size),
        "device": device.type,
        "world_size": world_size,
        "impl": EP_IMPL,
        "family": "moe",
        "reference": "sort_group",
        "status": "ok" if ok else "wrong",
        "error": None if ok else f"max |out - sort_group on the rank's tokens| = {err:.3g} > {tolerance:.3g}",
        "max_abs_err": err,
        "tolerance": tolerance,
        **ep_bench.timer_columns(device, timing),
        "samples_ms": pace_ms,
        **stats.columns(),
        "tokens_per_s": point.tokens * world_size / seconds,
        "flops": forward_flops,
        "tflops": forward_flops / seconds / 1e12,
        "backend": where.backend,
        "global_tokens": point.tokens * world_size,
        "split_ms": {stage: slowest["median_s"][stage] * 1e3 for stage in STAGES},
        "rank_split_ms": {stage: [p["median_s"][stage] * 1e3 for p in per_rank] for stage in STAGES},
        "rank_latency_ms": [p["median_s"]["total"] * 1e3 for p in per_rank],
        "rank_rows_computed": rows_computed,
        "rank_dispatch_bytes": [p["dispatch_bytes_sent"] for p in per_rank],
        "rank_combine_bytes": [p["combine_bytes_sent"] for p in per_rank],
        "rank_bytes_sent": [
            p["dispatch_bytes_sent"] + p["combine_bytes_sent"] + p["counts_bytes_sent"] for p in per_rank
        ],
        "rank_imbalance": _max_over_mean(rows_computed),
        "compute_imbalance": _max_over_mean(compute_ms),
    }


def _max_over_mean(values: list[float]) -> float | None:
    mean = statistics.fmean(values)
    return max(values) / mean if mean > 0 else None
