"""The memory plot's bars: weights, the weight gradients of a train row, activations and the input, each from
its own column."""

import pytest

from reports.facets import split_groups
from reports.load import load_run
from reports.plots import memory
from tests.reports import synth

MIB = 2**20


@pytest.fixture
def groups(tmp_path) -> dict:
    """{mode: its group} of a one-point synthetic run, forward and train."""
    rows = synth.make_rows(tokens=(16,), modes=("forward", "train"), skew_tokens=None, failures=False)
    _, df = load_run(synth.write_run(tmp_path / "run", rows))
    return {g.df["mode"].iloc[0]: g for g in split_groups(df)}


@pytest.mark.parametrize("mode", ["forward", "train"])
def test_each_bar_stacks_the_rows_own_columns(groups, mode):
    group = groups[mode]
    lines = {impl: group.line(impl) for impl in synth.IMPLS}
    stack = memory._stack(group, lines, 16)
    for i, impl in enumerate(stack.names):
        r = lines[impl].iloc[0]
        grads = r["grad_bytes"] if mode == "train" else 0.0
        assert (mode == "train") == (grads > 0), impl
        assert stack.weights[i] == r["weight_bytes"] / MIB and stack.grads[i] == grads / MIB
        assert stack.activations[i] == r["activation_bytes"] / MIB
        total = stack.weights[i] + stack.grads[i] + stack.activations[i] + stack.rest[i]
        assert total == pytest.approx(r["peak_mem_bytes"] / MIB) and stack.rest[i] > 0  # the input


def test_only_the_train_plot_has_a_gradient_bar(groups, tmp_path, monkeypatch):
    legends, save = {}, memory.style.save

    def keep(fig, path, *args):
        legends[path.name] = [t.get_text() for t in fig.legends[0].get_texts()]
        return save(fig, path, *args)

    monkeypatch.setattr(memory.style, "save", keep)
    for mode, group in groups.items():
        assert not isinstance(memory.plot(group, synth.meta(), tmp_path), str), mode
    by_mode = {mode: legends[f"{group.slug}_memory.png"] for mode, group in groups.items()}
    assert "weight gradients" in by_mode["train"] and "weight gradients" not in by_mode["forward"]
