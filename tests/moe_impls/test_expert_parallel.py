"""Expert parallel over 2 and 4 gloo processes equals single-process sort_group, and forward is its stages.

Each world size is spawned once (module fixture) and runs every case; the ranks save what they computed and
the assertions run here, against `sort_group` on the global batch in this process.
"""

from __future__ import annotations

import time

import pytest
import torch
import torch.distributed as dist

import moe_impls
from moe_impls import MoEConfig, MoEWeights
from moe_impls.expert_parallel import ExpertParallelMoE, ExpertShard, world_size_problem
from tests.ranks import spawn

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}


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
    layer = ExpertParallelMoE(weights).eval()
    x, loss_w = _global_input(cfg, sizes, dtype)
    lo, hi = sum(sizes[:rank]), sum(sizes[: rank + 1])
    x_local = x[lo:hi].clone().requires_grad_()
    y, routing = layer(x_local)
    (y.float() * loss_w[lo:hi]).sum().backward()
    with torch.no_grad():  # forward is the four stages in order: called one by one they give the same output
        x_TD, staged_routing = layer.route(x_local)
        x_MD, sent = layer.dispatch(x_TD, staged_routing)
        staged_y = layer.combine_exchange(layer.expert_outputs(x_MD, sent), sent)
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
        "traffic": sent.traffic,
        "staged_y": staged_y,
        "dispatched_rows": x_MD.shape[0],
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
    # registered submodules are structure, not state (weights.plain_children also makes them plain attributes)
    out["state_after_forward"] = set(vars(layer)) - set(vars(torch.nn.Module())) - set(layer._modules)
    try:
        ExpertParallelMoE(MoEWeights(MoEConfig(d_model=8, d_ff=8, num_experts=world + 1, top_k=1)))
    except ValueError as e:
        out["indivisible"] = str(e)
    return out


def _failing_worker(rank: int, world: int) -> dict:
    weights = MoEWeights(MoEConfig(d_model=16, d_ff=8, num_experts=4, top_k=2))
    layer = ExpertParallelMoE(weights)
    d_model = 15 if rank == 1 else 16  # rank 1 fails its input check; rank 0 waits in the count exchange
    layer(torch.randn(4, d_model))
    return {}


@pytest.fixture(scope="module", params=[2, 4], ids=["world2", "world4"])
def ranks(request, tmp_path_factory) -> list[dict]:
    return spawn(_worker, request.param, tmp_path_factory.mktemp(f"ep{request.param}"))


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


def test_stages_called_in_order_are_the_forward(ranks):
    for case in _cases(len(ranks)):
        for r in ranks:
            torch.testing.assert_close(r[case]["staged_y"], r[case]["y"], rtol=0, atol=0)
            assert r[case]["dispatched_rows"] == r[case]["computed_rows"]


def test_layer_keeps_no_state_between_forwards(ranks):
    """No timing or traffic is left on the layer: the instrument times the stages and reads the dispatch. `_views`
    holds only views of the layer's own weights (moe_impls/views.py), made when autograd is off."""
    for r in ranks:
        assert r["state_after_forward"] == {"cfg", "group", "rank", "router", "world_size", "_views"}


def test_capacity_is_applied_per_rank(ranks):
    assert max(r["capacity_err"] for r in ranks) < 1e-6


def test_indivisible_expert_count_is_a_clear_error(ranks):
    world = len(ranks)
    for r in ranks:
        assert r["indivisible"] == (
            f"expert parallel: num_experts ({world + 1}) must be divisible by the world size ({world})"
        )


def test_a_failing_rank_raises_its_error_and_nothing_hangs(tmp_path):
    start = time.monotonic()
    with pytest.raises(RuntimeError) as failure:
        spawn(_failing_worker, 2, tmp_path)
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


def test_world_size_problem_names_an_uneven_shard():
    assert world_size_problem(8, 4) is None and world_size_problem(8, 1) is None
    assert world_size_problem(8, 3) == "num_experts (8) must be divisible by the world size (3)"
