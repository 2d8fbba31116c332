"""One expert-parallel measurement point, run on every rank of an initialised process group.

The runner starts the processes (torchrun or spawn), initialises the group and calls `measure_ep_point` on
every rank; this file neither starts processes nor writes results.
"""

from __future__ import annotations

import statistics

import torch
import torch.distributed as dist

from moe_impls.config import MoEConfig
from moe_impls.expert_parallel import STAGES, ExpertParallelMoE
from moe_impls.sort_group import SortGroupMoE
from moe_impls.weights import MoEWeights


def _device_for_backend() -> torch.device:
    """The NCCL backend means this rank's current CUDA device; anything else runs on the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@torch.no_grad()
def measure_ep_point(
    cfg: MoEConfig,
    tokens_per_rank: int,
    dtype: torch.dtype,
    reps: int,
    *,
    warmup: int = 2,
    seed: int = 0,
    group: dist.ProcessGroup | None = None,
) -> dict:
    """Median forward time split (seconds) of the expert-parallel layer and the bytes each rank sent.

    Every rank builds the same seeded weights and keeps its shard; rank r's input is seeded `seed + 1 + r`, so
    ranks route different tokens. A barrier precedes each repetition so that rank skew from the previous one
    does not land in the next dispatch; the split uses `profile=True` (see `ExpertParallelMoE`).

    The first (warm-up) output is checked on each rank against `sort_group` on the full weights and this rank's
    own tokens, which the layer equals for every routing (decisions are per rank, see `ExpertParallelMoE`); the
    check needs no gather, so it also holds at shapes whose global batch would not fit on one device.

    Returns, on every rank, this rank's figures:
        world_size, rank, tokens_per_rank, dtype, reps, device
        samples_s: {stage: [seconds per repetition]} for stages routing, dispatch, compute, combine, total
        median_s: {stage: median seconds}
        rows_sent, rows_received: per destination / source rank (assignments, one row of D each)
        dispatch_bytes_sent, combine_bytes_sent, counts_bytes_sent: bytes that left this rank
        max_abs_err: max |EP output - sort_group output| on this rank's tokens; ref_max_abs: max |sort_group output|
    and `per_rank`: on rank 0 the list of every rank's dict (samples_s included, per_rank not), else None.
    """
    if reps < 1:
        raise ValueError(f"measure_ep_point: reps must be >= 1, got {reps}")
    group = group if group is not None else dist.group.WORLD
    device = _device_for_backend()
    full = MoEWeights(cfg, device=device, dtype=dtype, seed=seed)
    layer = ExpertParallelMoE(full, group=group).eval()
    rank = layer.rank
    gen = torch.Generator().manual_seed(seed + 1 + rank)
    x = torch.randn(tokens_per_rank, cfg.d_model, generator=gen).to(device=device, dtype=dtype)
    y_ep = layer(x)[0]
    reference = SortGroupMoE(full)(x)[0]
    max_abs_err = float((y_ep.float() - reference.float()).abs().max()) if y_ep.numel() else 0.0
    ref_max_abs = float(reference.abs().max()) if reference.numel() else 0.0
    del full, reference, y_ep  # only the shard stays resident while timing
    for _ in range(warmup - 1):
        layer(x)
    layer.profile = True
    samples: dict[str, list[float]] = {stage: [] for stage in (*STAGES, "total")}
    for _ in range(reps):
        dist.barrier(group=group)
        layer(x)
        split = layer.last_split
        for stage in STAGES:
            samples[stage].append(getattr(split, f"{stage}_s"))
        samples["total"].append(split.total_s)
    traffic = layer.last_traffic
    point = {
        "world_size": layer.world_size,
        "rank": rank,
        "tokens_per_rank": tokens_per_rank,
        "dtype": str(dtype).removeprefix("torch."),
        "reps": reps,
        "device": device.type,
        "median_s": {stage: statistics.median(values) for stage, values in samples.items()},
        "rows_sent": list(traffic.rows_sent_R),
        "rows_received": list(traffic.rows_received_R),
        "dispatch_bytes_sent": traffic.dispatch_bytes_sent,
        "combine_bytes_sent": traffic.combine_bytes_sent,
        "counts_bytes_sent": traffic.counts_bytes_sent,
        "max_abs_err": max_abs_err,
        "ref_max_abs": ref_max_abs,
        "samples_s": samples,
    }
    gathered = [None] * layer.world_size if rank == 0 else None
    dist.gather_object(point, gathered, dst=dist.get_global_rank(group, 0), group=group)
    return {**point, "per_rank": gathered}
