"""The cost-model fit to measured expert-parallel rows: exact rows give back the link and rate they were made from."""

from __future__ import annotations

import pytest

from analysis.ep_calibration import calibrate


def test_calibrate_recovers_a_known_link_and_rate():
    """Rows made from an exact alpha-beta link and FLOP rate: the fit returns them and predicts with no error."""
    alpha, bandwidth, rate = 1e-4, 1e9, 1e10
    rows = []
    for world, tokens in [(1, 64), (2, 64), (2, 256), (4, 64), (4, 256)]:
        D, k, F_ = 16, 2, 32
        row_bytes = tokens * k * D * 4 * (world - 1) / world
        comm_ms = (alpha + row_bytes / bandwidth) * 1e3 if world > 1 else 0.0
        computed = tokens * k
        compute_ms = computed * 2 * D * 3 * F_ / rate * 1e3
        rows.append(
            dict(
                impl="expert_parallel",
                status="ok",
                point_id=f"{world}-{tokens}",
                shape="s",
                dtype="float32",
                num_experts=4,
                top_k=k,
                d_model=D,
                d_ff=F_,
                activation="swiglu",
                tokens=tokens,
                world_size=world,
                rank_dispatch_bytes=[row_bytes] * world,
                rank_combine_bytes=[row_bytes] * world,
                rank_rows_computed=[computed] * world,
                split_ms={"routing": 0.0, "dispatch": comm_ms, "compute": compute_ms, "combine": comm_ms},
            )
        )
    model = calibrate(rows)
    assert model["link"]["latency_s"] == pytest.approx(alpha)
    assert model["link"]["bandwidth_Bps"] == pytest.approx(bandwidth)
    assert model["flops_per_s"] == pytest.approx(rate)
    assert model["fit_world_sizes"] == [2, 4]
    for err in model["comm_error_by_world_size"].values():
        assert err["mean_abs_err_ms"] == pytest.approx(0, abs=1e-9)
    for p in model["points"]:
        assert p["predicted_compute_ms"] == pytest.approx(p["measured_compute_ms"])


def test_calibrate_refuses_rows_that_do_not_determine_a_link():
    row = dict(
        world_size=2,
        rank_dispatch_bytes=[100, 100],
        rank_combine_bytes=[100, 100],
        split_ms={"routing": 0.0, "dispatch": 1.0, "compute": 1.0, "combine": 2.0},
    )
    with pytest.raises(ValueError, match="distinct byte counts"):
        calibrate([row])
