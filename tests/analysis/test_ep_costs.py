"""The expert-parallel cost model, by hand: traffic shares, alpha-beta all-to-alls, where EP stops paying."""

from __future__ import annotations

import math

import pytest

from analysis.ep_costs import (
    Cluster,
    ExpertShape,
    Link,
    candidate_world_sizes,
    ep_cost,
    fit_link,
    min_tokens_per_rank,
    uniform_traffic_shares,
    where_ep_stops_paying,
)

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


def test_candidate_world_sizes_divide_the_experts_and_fill_nodes():
    assert candidate_world_sizes(16, 4) == [1, 2, 4, 8, 16]
    assert candidate_world_sizes(24, 4) == [1, 2, 3, 4, 8, 12, 24]  # 6 divides 24 but not into whole nodes of 4
