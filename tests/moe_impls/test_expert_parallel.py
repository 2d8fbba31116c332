"""Expert parallel over 2 and 4 gloo processes equals single-process sort_group; the EP cost model by hand.

Each world size is spawned once (module fixture) and runs every case; the ranks save what they computed and
the assertions run here, against `sort_group` on the global batch in this process.
"""

from __future__ import annotations

import math
import os
import socket
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import moe_impls
from moe_impls import MoEConfig, MoEWeights
from moe_impls.expert_parallel import ExpertParallelMoE, ExpertShard
from suites.ep_bench import measure_ep_point
from analysis.ep_costs import (
    Cluster,
    ExpertShape,
    Link,
    ep_cost,
    fit_link,
    min_tokens_per_rank,
    uniform_traffic_shares,
    where_ep_stops_paying,
)

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}
SPAWN_DEADLINE_S = 90


def _cases(world: int) -> dict[str, tuple[MoEConfig, list[int], torch.dtype]]:
    """name -> (config, tokens on each rank, dtype). Uneven slices, and one rank with no tokens at all."""
    return {
        "swiglu_softmax": (
            MoEConfig(d_model=16, d_ff=24, num_experts=8, top_k=2),
            [13, 7, 0, 21][:world],
            torch.float32,
        ),
        "gelu_sigmoid_top1": (
            MoEConfig(d_model=16, d_ff=8, num_experts=4, top_k=1, activation="gelu", router="sigmoid_topk"),
            [9, 16, 5, 3][:world],
            torch.float32,
        ),
        "noisy_eval_topall": (
            MoEConfig(d_model=16, d_ff=8, num_experts=4, top_k=4, router="noisy_topk", normalize_topk=False),
            [6, 11, 4, 8][:world],
            torch.float32,
        ),
        "bf16": (MoEConfig(d_model=16, d_ff=16, num_experts=8, top_k=2), [17, 9, 12, 6][:world], torch.bfloat16),
    }


def _global_input(cfg: MoEConfig, sizes: list[int], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch and the fixed loss weights that make each output element's gradient distinct."""
    x = torch.randn(sum(sizes), cfg.d_model, generator=torch.Generator().manual_seed(7)).to(dtype)
    return x, torch.linspace(-1, 1, x.numel()).view_as(x)


def _ep_case(rank: int, world: int, cfg: MoEConfig, sizes: list[int], dtype: torch.dtype) -> dict:
    weights = MoEWeights(cfg, dtype=dtype, seed=3)
    layer = ExpertParallelMoE(weights, profile=True).eval()
    x, loss_w = _global_input(cfg, sizes, dtype)
    lo, hi = sum(sizes[:rank]), sum(sizes[: rank + 1])
    x_local = x[lo:hi].clone().requires_grad_()
    y, routing = layer(x_local)
    (y.float() * loss_w[lo:hi]).sum().backward()
    router_grad = weights.router.weight.grad.clone()
    dist.all_reduce(router_grad)  # the router is replicated: its full gradient is the sum of the ranks' shares
    expert_grads = {}
    for name, p in layer.weights.experts.named_parameters():
        parts = [torch.empty_like(p.grad) for _ in range(world)]
        dist.all_gather(parts, p.grad)
        expert_grads[name] = torch.cat(parts)
    return {
        "y": y.detach(),
        "x_grad": x_local.grad,
        "router_grad": router_grad,
        "expert_grads": expert_grads,
        "assignments": routing.token_idx_N.numel(),
        "computed_rows": routing.computed_rows,
        "traffic": layer.last_traffic,
        "split": layer.last_split,
    }


def _worker(rank: int, world: int) -> dict:
    out = {name: _ep_case(rank, world, *case) for name, case in _cases(world).items()}
    # A capacity factor is applied per rank: EP equals sort_group on this rank's own slice.
    cfg = MoEConfig(d_model=16, d_ff=8, num_experts=4, top_k=2, capacity_factor=1.0)
    weights = MoEWeights(cfg, seed=5)
    x = torch.randn(10, 16, generator=torch.Generator().manual_seed(rank))
    layer = ExpertParallelMoE(weights)
    y, _ = layer(x)
    out["capacity_err"] = (y - moe_impls.get("sort_group")(weights)(x)[0]).abs().max().item()
    out["plain_split"] = layer.last_split
    try:
        ExpertParallelMoE(MoEWeights(MoEConfig(d_model=8, d_ff=8, num_experts=world + 1, top_k=1)))
    except ValueError as e:
        out["indivisible"] = str(e)
    out["point"] = measure_ep_point(MoEConfig(d_model=16, d_ff=16, num_experts=4, top_k=2), 8, torch.float32, reps=3)
    return out


def _failing_worker(rank: int, world: int) -> dict:
    weights = MoEWeights(MoEConfig(d_model=16, d_ff=8, num_experts=4, top_k=2))
    layer = ExpertParallelMoE(weights)
    d_model = 15 if rank == 1 else 16  # rank 1 fails its input check; rank 0 waits in the count exchange
    layer(torch.randn(4, d_model))
    return {}


def _entry(rank: int, world: int, port: int, out_dir: str, fn) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=timedelta(seconds=60)
    )
    try:
        torch.save(fn(rank, world), os.path.join(out_dir, f"rank{rank}.pt"))
    except Exception as e:
        Path(out_dir, f"rank{rank}.err").write_text(f"{type(e).__name__}: {str(e).splitlines()[0]}")
        raise
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(fn, world: int, out_dir: Path) -> list[dict]:
    """Run fn(rank, world) on `world` gloo ranks and return what each returned.

    If a rank raises, the others fail in their next collective (gloo sees the peer gone) or are killed; the
    error raised here names every failed rank's exception, the cause first by rank order. A hang is killed.
    """
    ctx = mp.start_processes(
        _entry, args=(world, _free_port(), str(out_dir), fn), nprocs=world, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + SPAWN_DEADLINE_S
    try:
        while not ctx.join(timeout=1, grace_period=5):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    p.kill()
                pytest.fail(f"expert-parallel ranks still running after {SPAWN_DEADLINE_S} s")
    except (mp.ProcessRaisedException, mp.ProcessExitedException):
        errors = {r: out_dir / f"rank{r}.err" for r in range(world)}
        lines = [f"rank {r}: {path.read_text()}" for r, path in errors.items() if path.exists()]
        raise RuntimeError("; ".join(lines) or "a rank died without a Python exception") from None
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(world)]


@pytest.fixture(scope="module", params=[2, 4], ids=["world2", "world4"])
def ranks(request, tmp_path_factory) -> list[dict]:
    return _spawn(_worker, request.param, tmp_path_factory.mktemp(f"ep{request.param}"))


def _reference(cfg: MoEConfig, sizes: list[int], dtype: torch.dtype) -> dict:
    weights = MoEWeights(cfg, dtype=dtype, seed=3)
    x, loss_w = _global_input(cfg, sizes, dtype)
    x = x.requires_grad_()
    y, _ = moe_impls.get("sort_group")(weights).eval()(x)
    (y.float() * loss_w).sum().backward()
    grads = {name: p.grad for name, p in weights.experts.named_parameters()}
    return {"y": y.detach(), "x_grad": x.grad, "router_grad": weights.router.weight.grad, "expert_grads": grads}


@pytest.mark.parametrize("case", list(_cases(4)))
def test_output_and_gradients_equal_single_process_sort_group(ranks, case):
    cfg, sizes, dtype = _cases(len(ranks))[case]
    ref = _reference(cfg, sizes, dtype)
    tol = TOL[dtype]
    for what in ("y", "x_grad"):
        got = torch.cat([r[case][what] for r in ranks])
        torch.testing.assert_close(got, ref[what], **tol, msg=lambda m, w=what: f"{case} {w}: {m}")
    for r in ranks:
        torch.testing.assert_close(r[case]["router_grad"], ref["router_grad"], **tol)
        for name, g in r[case]["expert_grads"].items():
            torch.testing.assert_close(g, ref["expert_grads"][name], **tol, msg=lambda m, n=name: f"{case} {n}: {m}")


def test_traffic_accounts_for_every_row(ranks):
    world = len(ranks)
    case = "swiglu_softmax"
    sent = [r[case]["traffic"].rows_sent_R for r in ranks]
    received = [r[case]["traffic"].rows_received_R for r in ranks]
    for dst in range(world):
        assert received[dst] == tuple(sent[src][dst] for src in range(world))
        assert ranks[dst][case]["computed_rows"] == sum(received[dst])
    for rank, r in enumerate(ranks):
        traffic = r[case]["traffic"]
        assert sum(traffic.rows_sent_R) == r[case]["assignments"]
        row_bytes = 16 * 4
        assert traffic.dispatch_bytes_sent == (sum(traffic.rows_sent_R) - traffic.rows_sent_R[rank]) * row_bytes
        assert traffic.combine_bytes_sent == (sum(received[rank]) - received[rank][rank]) * row_bytes
        assert traffic.counts_bytes_sent == (world - 1) * (8 // world) * 8


def test_profile_split_is_recorded_only_when_asked(ranks):
    for r in ranks:
        split = r["swiglu_softmax"]["split"]
        assert min(split.routing_s, split.dispatch_s, split.compute_s, split.combine_s) > 0
        assert split.total_s == pytest.approx(split.routing_s + split.dispatch_s + split.compute_s + split.combine_s)
        assert r["plain_split"] is None


def test_capacity_is_applied_per_rank(ranks):
    assert max(r["capacity_err"] for r in ranks) < 1e-6


def test_indivisible_expert_count_is_a_clear_error(ranks):
    world = len(ranks)
    for r in ranks:
        assert r["indivisible"] == (
            f"expert parallel: num_experts ({world + 1}) must be divisible by the world size ({world})"
        )


def test_measure_ep_point_gathers_every_rank_on_rank_0(ranks):
    world = len(ranks)
    point = ranks[0]["point"]
    assert [p["rank"] for p in point["per_rank"]] == list(range(world))
    assert all(r["point"]["per_rank"] is None for r in ranks[1:])
    assert set(point["median_s"]) == {"routing", "dispatch", "compute", "combine", "total"}
    assert all(len(v) == 3 for v in point["samples_s"].values())
    assert sum(sum(p["rows_sent"]) for p in point["per_rank"]) == world * 8 * 2
    assert point["per_rank"][1]["dispatch_bytes_sent"] == ranks[1]["point"]["dispatch_bytes_sent"]


def test_a_failing_rank_raises_its_error_and_nothing_hangs(tmp_path):
    start = time.monotonic()
    with pytest.raises(RuntimeError) as failure:
        _spawn(_failing_worker, 2, tmp_path)
    assert (
        "rank 1: ValueError: ExpertParallelMoE(expert_parallel): expected hidden states [..., 16], got (4, 15)"
        in str(failure.value)
    )
    assert time.monotonic() - start < 45


def test_shard_copies_only_its_experts_and_shares_the_router():
    full = MoEWeights(MoEConfig(d_model=8, d_ff=4, num_experts=4, top_k=2, activation="gelu"), seed=2)
    shard = ExpertShard(full, rank=1, world_size=2)
    assert shard.router is full.router and shard.first_expert == 2 and shard.num_local_experts == 2
    for name, p in shard.experts.named_parameters():
        full_p = getattr(full.experts, name)
        assert torch.equal(p, full_p[2:4]) and p.untyped_storage().data_ptr() != full_p.untyped_storage().data_ptr()
    assert shard.expert_bytes() * 2 == full.expert_bytes()
    with pytest.raises(ValueError, match=r"num_experts \(4\) must be divisible by the world size \(3\)"):
        ExpertShard(full, rank=0, world_size=3)


# ----- cost model, by hand -----

# Round numbers: 1 GB/s and 10 us within a node, 0.25 GB/s and 100 us across nodes, 4 ranks per node.
CLUSTER = Cluster(ranks_per_node=4, intra=Link(1e9, 10e-6), inter=Link(0.25e9, 100e-6))
# 1000 tokens x 2 rows x 500 elements x 2 bytes = 2e6 bytes per all-to-all; 2*2*500*(2*1000 + 1000) = 6e6 FLOP/token.
SHAPE = ExpertShape(num_experts=16, top_k=2, d_model=500, d_ff=1000, dtype_bytes=2)


def test_uniform_traffic_shares():
    assert uniform_traffic_shares(1, 4) == (uniform_traffic_shares(1, 4).__class__(1.0, 0.0, 0.0))
    shares = uniform_traffic_shares(8, 4)
    assert (shares.local, shares.intra, shares.inter) == (1 / 8, 3 / 8, 4 / 8)
    shares = uniform_traffic_shares(2, 4)
    assert (shares.local, shares.intra, shares.inter) == (0.5, 0.5, 0.0)
    with pytest.raises(ValueError, match=r"world_size \(6\) must be a multiple of ranks_per_node \(4\)"):
        uniform_traffic_shares(6, 4)


def test_ep_cost_within_one_node():
    # R = 4: 3/4 of 2e6 B = 1.5e6 B over 1 GB/s: 10 us + 1500 us. Compute 1000 * 6e6 / 1e12 = 6 ms.
    cost = ep_cost(SHAPE, tokens_per_rank=1000, world_size=4, cluster=CLUSTER, flops_per_s=1e12)
    assert cost.bytes_per_all_to_all == 2e6
    assert (cost.intra_bytes, cost.inter_bytes) == (1.5e6, 0.0)
    assert cost.dispatch_s == pytest.approx(1.51e-3) and cost.combine_s == cost.dispatch_s
    assert cost.compute_s == pytest.approx(6e-3)
    assert cost.compute_to_comm == pytest.approx(6e-3 / 3.02e-3)


def test_ep_cost_across_nodes_is_bound_by_the_slower_link():
    # R = 8: intra 3/8 * 2e6 = 0.75e6 B -> 760 us; inter 4/8 * 2e6 = 1e6 B at 0.25 GB/s -> 100 us + 4000 us.
    cost = ep_cost(SHAPE, tokens_per_rank=1000, world_size=8, cluster=CLUSTER, flops_per_s=1e12)
    assert (cost.intra_bytes, cost.inter_bytes) == (0.75e6, 1e6)
    assert cost.dispatch_s == pytest.approx(4.1e-3)
    assert cost.compute_to_comm == pytest.approx(6e-3 / 8.2e-3)
    assert ep_cost(SHAPE, 1000, 1, CLUSTER, 1e12).compute_to_comm == math.inf
    with pytest.raises(ValueError, match=r"num_experts \(16\) must be divisible by the world size \(3\)"):
        ep_cost(SHAPE, 1000, 3, CLUSTER, 1e12)


def test_where_ep_stops_paying():
    # Candidates 2, 4, 8, 16: within the node the ratio is 6/3.02 at R=4, across nodes 6/8.2 < 1 at R=8.
    assert where_ep_stops_paying(SHAPE, 1000, CLUSTER, 1e12) == 8
    assert where_ep_stops_paying(SHAPE, 1000, CLUSTER, 1e12, world_sizes=[2, 4]) is None


def test_min_tokens_per_rank():
    # R = 4: c = 6e6/1e12 = 6 us/token, s = 2000 B * 3/4 / 1e9 = 1.5 us/token: T >= 2*10us / (6 - 3) us = 6.67.
    assert min_tokens_per_rank(SHAPE, 4, CLUSTER, 1e12) == pytest.approx(20 / 3)
    assert (
        ep_cost(SHAPE, 7, 4, CLUSTER, 1e12).compute_to_comm >= 1 > ep_cost(SHAPE, 6, 4, CLUSTER, 1e12).compute_to_comm
    )
    # R = 8: inter s = 2000 * 1/2 / 0.25e9 = 4 us/token > c/2 = 3 us: never pays, whatever T.
    assert min_tokens_per_rank(SHAPE, 8, CLUSTER, 1e12) == math.inf
    assert min_tokens_per_rank(SHAPE, 1, CLUSTER, 1e12) == 0.0


def test_fit_link_recovers_alpha_and_beta():
    fit = fit_link([(0, 5e-6), (1e6, 5e-6 + 1e-3), (2e6, 5e-6 + 2e-3)])
    assert fit.link.latency_s == pytest.approx(5e-6) and fit.link.bandwidth_Bps == pytest.approx(1e9)
    assert fit.rmse_s == pytest.approx(0, abs=1e-12) and fit.num_points == 3
    # Least squares through (0, 1), (1, 2), (2, 4): slope 1.5, intercept 5/6.
    fit = fit_link([(0, 1.0), (1, 2.0), (2, 4.0)])
    assert fit.link.bandwidth_Bps == pytest.approx(1 / 1.5) and fit.link.latency_s == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="distinct byte counts"):
        fit_link([(1e6, 1e-3), (1e6, 2e-3)])
    with pytest.raises(ValueError, match="do not grow"):
        fit_link([(1e6, 2e-3), (2e6, 1e-3)])
