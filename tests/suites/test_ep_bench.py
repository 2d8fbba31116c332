"""The instrument's side of expert parallelism on 2 gloo ranks: stages timed from outside, the dispatch's host
syncs counted, the L2 flush kept out of the timed region, one point measured; and what the rows say of it."""

from __future__ import annotations

import time

import pytest
import torch
import torch.distributed as dist

from moe_impls import MoEConfig, MoEWeights
from moe_impls.expert_parallel import ExpertParallelMoE
from suites.counters import count
from suites.ep_bench import EPPointRequest, _time_stages, flushes_l2, measure_ep_point, timer_columns
from suites.ep_stages import timed_forward
from suites.schema import STAGES
from suites.timing_settings import TimingSettings
from tests.ranks import spawn

CFG = MoEConfig(d_model=16, d_ff=16, num_experts=4, top_k=2)
FLUSH_S = 0.2  # a stand-in flush this slow would show in every sample if it ran inside the timed region


def _worker(rank: int, world: int) -> dict:
    layer = ExpertParallelMoE(MoEWeights(CFG, seed=1)).eval()
    x = torch.randn(6 + rank, CFG.d_model, generator=torch.Generator().manual_seed(rank))
    with torch.no_grad():
        plain_y, record = layer(x)
        timed = timed_forward(layer, x)
        x_TD, routing = layer.route(x)
        _, sent = layer.dispatch(x_TD, routing)
        dispatch_counts = count(lambda: layer.dispatch(x_TD, routing))
        flushes: list[float] = []

        def slow_flush() -> None:
            flushes.append(time.perf_counter())
            time.sleep(FLUSH_S)

        flushed = _time_stages(layer, x, 2, dist.group.WORLD, slow_flush)
    return {
        "flushes": len(flushes),
        "flushed_total_s": flushed.seconds["total"],
        "timed": timed,
        "dispatch_syncs": dispatch_counts.syncs_by_op,
        "dispatch_traffic": sent.traffic,
        "computed_rows": record.computed_rows,
        "point": measure_ep_point(EPPointRequest(CFG, tokens_per_rank=8, dtype=torch.float32, reps=3)),
    }


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    return spawn(_worker, 2, tmp_path_factory.mktemp("ep_bench"))


def test_timed_forward_times_every_stage_and_reports_the_dispatch_traffic(ranks):
    for r in ranks:
        timed = r["timed"]
        assert list(timed.stage_s) == list(STAGES)
        assert min(timed.stage_s.values()) > 0
        assert timed.total_s == pytest.approx(sum(timed.stage_s.values()))
        assert timed.traffic == r["dispatch_traffic"]
        assert sum(timed.traffic.rows_received_R) == r["computed_rows"]


def test_dispatch_reads_only_the_counts_on_the_host(ranks):
    """The splits need one host read of the counts; the regroup is sized from them, so it adds no sync."""
    for r in ranks:
        assert r["dispatch_syncs"] == (("Tensor.tolist", 1),)


def test_the_flush_runs_before_each_repetition_outside_its_timed_region(ranks):
    for r in ranks:
        assert r["flushes"] == 2 and len(r["flushed_total_s"]) == 2
        assert max(r["flushed_total_s"]) < FLUSH_S


@pytest.mark.parametrize(
    "device, settings, cache, says",
    [
        ("cuda", TimingSettings(), "cold", "L2 flushed before each repetition, outside the timed region"),
        ("cuda", TimingSettings(l2_flush=False), "cold", "l2_flush = false: no L2 flush"),
        ("cpu", TimingSettings(l2_flush=True), "warm", "l2_flush does not apply on the CPU"),
        ("cpu", TimingSettings(cache="warm"), "warm", "cache = warm: every forward reuses one copy"),
    ],
    ids=["cuda_flushed", "cuda_no_flush", "cpu_cold", "cpu_warm"],
)
def test_timer_columns_say_how_the_rows_differ_from_world_size_1(device, settings, cache, says):
    columns = timer_columns(torch.device(device), settings)
    assert columns["timer"] == {"cuda": "cuda_event", "cpu": "perf_counter"}[device] and columns["cache"] == cache
    assert columns["timer_note"].startswith("expert_parallel protocol: each repetition is a barrier, then one forward")
    assert "slowest rank's sum of stages" in columns["timer_note"] and says in columns["timer_note"]
    assert flushes_l2(torch.device(device), settings) == says.startswith("L2 flushed")


def test_timer_columns_say_a_cuda_graph_does_not_apply():
    note = timer_columns(torch.device("cuda"), TimingSettings(cuda_graph=True))["timer_note"]
    assert note.endswith("cuda_graph does not apply: the dispatch reads the per-expert counts on the host")


def test_measure_ep_point_gathers_every_rank_on_rank_0(ranks):
    world = len(ranks)
    point = ranks[0]["point"]
    assert [p["rank"] for p in point["per_rank"]] == list(range(world))
    assert all(r["point"]["per_rank"] is None for r in ranks[1:])
    assert set(point["median_s"]) == {*STAGES, "total"}
    assert all(len(v) == 3 for v in point["samples_s"].values())
    for p in point["per_rank"]:
        for i, total in enumerate(p["samples_s"]["total"]):
            assert total == pytest.approx(sum(p["samples_s"][s][i] for s in STAGES))
    assert sum(sum(p["rows_sent"]) for p in point["per_rank"]) == world * 8 * 2
    assert point["per_rank"][1]["dispatch_bytes_sent"] == ranks[1]["point"]["dispatch_bytes_sent"]
    assert max(p["max_abs_err"] for p in point["per_rank"]) < 1e-5 < min(p["ref_max_abs"] for p in point["per_rank"])


def test_measure_ep_point_refuses_no_repetitions():
    with pytest.raises(ValueError, match="reps must be >= 1, got 0"):
        measure_ep_point(EPPointRequest(CFG, tokens_per_rank=8, dtype=torch.float32, reps=0))
