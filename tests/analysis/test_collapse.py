"""The collapse experiment records what its routers decided, and its bias rule pushes load the right way."""

from __future__ import annotations

import json
from dataclasses import replace

import pandas as pd
import pytest
import torch

from analysis.collapse.experiment import run_collapse
from analysis.collapse.settings import SETTINGS, CollapseConfig
from analysis.collapse.train import build_weights, dead_columns, update_selection_bias


@pytest.fixture(autouse=True)
def one_thread():
    """The experiment's matmuls are tiny; a second thread only adds synchronisation (the CLI default is 1 too)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY = CollapseConfig(
    steps=5, tokens=64, num_experts=4, clusters=4, d_in=8, d_model=16, d_ff=16, eval_every=2, eval_tokens=64
)


def test_dead_columns_by_hand():
    assert dead_columns(torch.tensor([6, 2, 0, 0])) == {"dead_experts": 2, "dead_fraction": 0.5}


def test_bias_update_moves_against_a_planted_imbalance():
    bias = torch.zeros(4)
    update_selection_bias(bias, torch.tensor([10, 2, 4, 0]), gamma=0.001)  # mean load 4
    assert bias.tolist() == pytest.approx([-0.001, 0.001, 0.0, 0.001])


def test_settings_start_from_the_same_router_and_experts():
    reference = build_weights(TINY, "softmax_topk")
    for router in ("noisy_topk", "sigmoid_topk"):
        other = build_weights(TINY, router)
        assert torch.equal(other.router.weight, reference.router.weight)
        for a, b in zip(other.experts.parameters(), reference.experts.parameters()):
            assert torch.equal(a, b)


def test_recorded_loads_match_the_routing_records(tmp_path):
    seen: dict[tuple[str, int], torch.Tensor] = {}

    def hook(setting, step, routing):
        assert torch.equal(routing.tokens_per_expert_E, torch.bincount(routing.expert_idx_N, minlength=4))
        seen[setting, step] = routing.tokens_per_expert_E.clone()

    meta = run_collapse(TINY, tmp_path, on_step=hook)
    rows = pd.read_json(tmp_path / "collapse.jsonl", lines=True)
    assert len(rows) == len(SETTINGS) * TINY.steps
    assert list(dict.fromkeys(rows["setting"])) == list(SETTINGS)
    for _, row in rows.iterrows():
        counts = torch.tensor(row["tokens_per_expert"])
        assert torch.equal(counts, seen[row["setting"], row["step"]])
        assert int(counts.sum()) == TINY.tokens * TINY.top_k
        assert row["load_cv"] == pytest.approx(float(counts.double().std(correction=0) / counts.double().mean()))
        assert row["load_max_over_mean"] == pytest.approx(float(counts.max() / counts.double().mean()))
        assert row["dead_experts"] == int((counts == 0).sum())
    evaluated = rows.dropna(subset=["eval_task_loss"])
    assert sorted(set(evaluated["step"])) == [1, 3, 4]  # every eval_every steps, and the last
    assert (rows.loc[rows["setting"] == "none", "aux_loss"] == 0).all()
    assert (rows.loc[rows["setting"] == "switch", "aux_loss"] > 0).all()
    assert json.loads((tmp_path / "collapse_meta.json").read_text()) == json.loads(json.dumps(meta))
    assert meta["settings"]["bias-fast"]["gamma"] == pytest.approx(TINY.gamma * TINY.fast_gamma_factor)


def test_bias_setting_applies_the_rule_between_steps(tmp_path):
    cfg = replace(TINY, gamma=0.01)
    run_collapse(cfg, tmp_path, settings=["bias"])
    rows = pd.read_json(tmp_path / "collapse.jsonl", lines=True).sort_values("step")
    biases = [torch.tensor(b) for b in rows["selection_bias"]]
    assert torch.equal(biases[0], torch.zeros(cfg.num_experts))
    for before, after, counts in zip(biases, biases[1:], rows["tokens_per_expert"]):
        load = torch.tensor(counts, dtype=torch.float32)
        assert torch.allclose(after - before, cfg.gamma * torch.sign(load.mean() - load))


def test_unknown_setting_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown collapse settings"):
        run_collapse(TINY, tmp_path, settings=["nope"])
