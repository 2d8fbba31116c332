"""The instrument's side of expert parallelism on 2 gloo ranks: stages timed from outside, one point measured."""

from __future__ import annotations

import pytest
import torch

from moe_impls import MoEConfig, MoEWeights
from moe_impls.expert_parallel import ExpertParallelMoE
from suites.ep_bench import EPPointRequest, measure_ep_point
from suites.ep_stages import timed_forward
from suites.schema import STAGES
from tests.ranks import spawn

CFG = MoEConfig(d_model=16, d_ff=16, num_experts=4, top_k=2)


def _worker(rank: int, world: int) -> dict:
    layer = ExpertParallelMoE(MoEWeights(CFG, seed=1)).eval()
    x = torch.randn(6 + rank, CFG.d_model, generator=torch.Generator().manual_seed(rank))
    with torch.no_grad():
        plain_y, record = layer(x)
        timed = timed_forward(layer, x)
        _, sent = layer.dispatch(*layer.route(x))
    return {
        "timed": timed,
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
