"""Cost model of expert parallelism: what the two all-to-alls cost against the expert compute they feed.

Legend: E experts, K top_k, T tokens per rank, D d_model, F d_ff, b bytes per element, R ranks, G ranks per
node. Bandwidths are bytes per second, one direction, per rank; latencies are seconds.

The model, for one MoE layer's forward on one rank:
- Traffic. Every assignment is one row of D elements (no de-duplication of a token's k rows), so each
  all-to-all moves T*K*D*b bytes out of each rank. Under uniform routing a row goes to each rank with
  probability 1/R: 1/R stays local (a copy), (G-1)/R crosses the intra-node fabric (NVLink class) and
  (R-G)/R crosses nodes (InfiniBand class). Uniform routing makes the exchange symmetric, so what a rank
  receives equals what it sends.
- Time (alpha-beta). Each link class costs alpha + bytes / beta; the intra- and inter-node sends go over
  different links at once, so one all-to-all costs max(t_intra, t_inter). The combine all-to-all sends the
  same rows back in the same dtype and costs the same as the dispatch.
- Compute. The rank's experts receive T*K rows on average and do 2*T*K*D*(H + F) FLOPs, H = 2F for SwiGLU
  (gate and up), F for GELU.
- "Pays off" means compute / (dispatch + combine) >= a threshold (1.0 by default): at or above it the
  all-to-alls can be hidden behind expert compute by overlapping micro-batches; below it the layer is
  communication bound. The ratio falls as R grows (more traffic leaves the rank, then the node) and rises
  with T (latency is amortised) towards the bandwidth-bound limit.
Real routing is skewed: the busiest rank sets the pace. Feed the measured per-rank rows in for that.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from analysis.flops import ffn_flops_per_row
from moe_impls.config import MoEConfig
from moe_impls.expert_parallel import world_size_problem

MAX_RANKS = 1 << 16  # largest world size considered: past any EP deployment, and it keeps E = 10^12 a short loop


@dataclass(frozen=True)
class Link:
    """One link class as seen by one rank: fixed cost per all-to-all (alpha) and bandwidth (1 / beta)."""

    bandwidth_Bps: float
    latency_s: float

    def seconds(self, num_bytes: float) -> float:
        """alpha + bytes / bandwidth; 0 when nothing crosses the link (the link is not used)."""
        return self.latency_s + num_bytes / self.bandwidth_Bps if num_bytes > 0 else 0.0


@dataclass(frozen=True)
class Cluster:
    ranks_per_node: int
    intra: Link  # NVLink class, between ranks of one node
    inter: Link  # InfiniBand class, between nodes


@dataclass(frozen=True)
class TrafficShares:
    """Shares of one rank's all-to-all rows that stay local, cross the node's fabric, cross nodes; sum to 1."""

    local: float
    intra: float
    inter: float


@dataclass(frozen=True)
class EPCost:
    """Predicted seconds and bytes of one forward on one rank."""

    bytes_per_all_to_all: float  # T*K*D*b, including the local share
    intra_bytes: float
    inter_bytes: float
    dispatch_s: float
    combine_s: float
    compute_s: float

    @property
    def comm_s(self) -> float:
        return self.dispatch_s + self.combine_s

    @property
    def compute_to_comm(self) -> float:
        """compute_s / comm_s; inf with nothing to send (one rank)."""
        return self.compute_s / self.comm_s if self.comm_s > 0 else math.inf


def uniform_traffic_shares(world_size: int, ranks_per_node: int) -> TrafficShares:
    """Where a uniformly routed row goes: 1/R local, (G-1)/R within the node, (R-G)/R to other nodes.

    With R <= G all ranks share one node. With R > G the ranks fill whole nodes, so R must be a multiple of G.
    """
    if world_size < 1 or ranks_per_node < 1:
        raise ValueError(f"world_size and ranks_per_node must be >= 1, got {world_size} and {ranks_per_node}")
    if world_size > ranks_per_node and world_size % ranks_per_node:
        raise ValueError(f"world_size ({world_size}) must be a multiple of ranks_per_node ({ranks_per_node})")
    node = min(world_size, ranks_per_node)
    return TrafficShares(1 / world_size, (node - 1) / world_size, (world_size - node) / world_size)


def candidate_world_sizes(num_experts: int, ranks_per_node: int) -> list[int]:
    """World sizes EP can run on: divisors of E (each rank holds E / R experts) up to MAX_RANKS that fill whole
    nodes once past one node."""
    E, G = num_experts, ranks_per_node
    return [r for r in range(1, min(E, MAX_RANKS) + 1) if world_size_problem(E, r) is None and (r <= G or r % G == 0)]


def all_to_all_seconds(num_bytes: float, world_size: int, cluster: Cluster) -> tuple[float, float, float]:
    """(seconds, intra-node bytes, inter-node bytes) of one uniform all-to-all of `num_bytes` out of each rank."""
    shares = uniform_traffic_shares(world_size, cluster.ranks_per_node)
    intra, inter = num_bytes * shares.intra, num_bytes * shares.inter
    return max(cluster.intra.seconds(intra), cluster.inter.seconds(inter)), intra, inter


@dataclass(frozen=True)
class ExpertShape:
    """The layer's shape as far as expert parallelism cares: what a routed row weighs and what it costs."""

    num_experts: int
    top_k: int
    d_model: int
    d_ff: int
    dtype_bytes: int
    activation: str = "swiglu"

    def __post_init__(self) -> None:
        if self.activation not in ("swiglu", "gelu"):
            raise ValueError(f"ExpertShape.activation must be 'swiglu' or 'gelu', got {self.activation!r}")

    @classmethod
    def from_config(cls, cfg: MoEConfig, dtype_bytes: int) -> ExpertShape:
        return cls(cfg.num_experts, cfg.top_k, cfg.d_model, cfg.d_ff, dtype_bytes, cfg.activation)

    @property
    def bytes_per_token(self) -> int:
        """K*D*b: one token's k rows on the wire."""
        return self.top_k * self.d_model * self.dtype_bytes

    @property
    def flops_per_token(self) -> float:
        """2*K*D*(H + F): the multiply-adds of the k expert FFNs one token runs (H = 2F SwiGLU, F GELU)."""
        return float(self.top_k * ffn_flops_per_row(self.d_model, self.d_ff, self.activation))


def ep_cost(shape: ExpertShape, tokens_per_rank: int, world_size: int, cluster: Cluster, flops_per_s: float) -> EPCost:
    """Predicted dispatch, combine and expert-compute seconds on one rank under uniform routing.

    `flops_per_s` is the rate the grouped expert matmuls achieve (measure it; a datasheet peak flatters).
    """
    why = world_size_problem(shape.num_experts, world_size)
    if why:
        raise ValueError(why)
    num_bytes = float(tokens_per_rank * shape.bytes_per_token)
    a2a_s, intra, inter = all_to_all_seconds(num_bytes, world_size, cluster)
    compute_s = tokens_per_rank * shape.flops_per_token / flops_per_s
    return EPCost(num_bytes, intra, inter, a2a_s, a2a_s, compute_s)


def min_tokens_per_rank(
    shape: ExpertShape, world_size: int, cluster: Cluster, flops_per_s: float, threshold: float = 1.0
) -> float:
    """Fewest tokens per rank at which compute / (dispatch + combine) reaches `threshold`.

    Per link class, compute c*T >= threshold * 2 * (alpha + s*T) gives T >= 2*threshold*alpha / (c - 2*threshold*s),
    with c seconds of compute and s seconds of transfer per token; the ratio is the smaller of the two classes'
    ratios, so the answer is the larger bound. 0.0 with one rank; inf when even the bandwidth-bound limit
    (T -> inf) stays below the threshold. A float: round up for a token count.
    """
    shares = uniform_traffic_shares(world_size, cluster.ranks_per_node)
    c = shape.flops_per_token / flops_per_s
    bound = 0.0
    for share, link in ((shares.intra, cluster.intra), (shares.inter, cluster.inter)):
        if share == 0:
            continue
        margin = c - 2 * threshold * shape.bytes_per_token * share / link.bandwidth_Bps
        if margin <= 0:
            return math.inf
        bound = max(bound, 2 * threshold * link.latency_s / margin)
    return bound


def where_ep_stops_paying(
    shape: ExpertShape,
    tokens_per_rank: int,
    cluster: Cluster,
    flops_per_s: float,
    threshold: float = 1.0,
    world_sizes: Sequence[int] | None = None,
) -> int | None:
    """Smallest world size whose compute / comm falls below `threshold`; None if every candidate stays above.

    Candidates default to `candidate_world_sizes` above 1 (one rank has nothing to communicate).
    """
    if world_sizes is None:
        world_sizes = [r for r in candidate_world_sizes(shape.num_experts, cluster.ranks_per_node) if r > 1]
    for world_size in sorted(world_sizes):
        if ep_cost(shape, tokens_per_rank, world_size, cluster, flops_per_s).compute_to_comm < threshold:
            return world_size
    return None


@dataclass(frozen=True)
class LinkFit:
    """A least-squares fit of seconds = alpha + bytes / bandwidth to measured points."""

    link: Link
    rmse_s: float
    num_points: int


def fit_link(points: Iterable[tuple[float, float]]) -> LinkFit:
    """Fit alpha (latency_s) and beta (1 / bandwidth_Bps) to measured (bytes, seconds) pairs.

    Use the bytes that crossed the link class being fitted (e.g. `EPTraffic.dispatch_bytes_sent`) against the
    measured all-to-all seconds. alpha is kept as fitted even when slightly negative (noise at small sizes), so
    the fit stays the least-squares one; inspect `rmse_s`.
    """
    pts = [(float(b), float(s)) for b, s in points]
    if len({b for b, _ in pts}) < 2:
        raise ValueError(f"fit_link needs points at >= 2 distinct byte counts, got {len(pts)} points")
    slope, intercept = statistics.linear_regression([b for b, _ in pts], [s for _, s in pts])
    if slope <= 0:
        raise ValueError(f"fit_link: seconds do not grow with bytes (slope {slope:g} s/B); no bandwidth to fit")
    rmse = math.sqrt(sum((intercept + slope * b - s) ** 2 for b, s in pts) / len(pts))
    return LinkFit(Link(bandwidth_Bps=1 / slope, latency_s=intercept), rmse, len(pts))
