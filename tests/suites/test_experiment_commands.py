"""`moe-bench experiment collapse` runs the experiment from analysis, then renders its report from reports."""

from __future__ import annotations

import pytest
import torch

from suites.cli import main


@pytest.fixture(autouse=True)
def restore_threads():
    """The command sets torch's thread count (default 1); later tests get theirs back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_collapse_runs_and_renders(tmp_path, capsys):
    assert main(["experiment", "collapse", "--steps", "3", "--out", str(tmp_path), "--settings", "none,bias"]) == 0
    printed = capsys.readouterr().out
    assert "none" in printed and "bias" in printed
    for name in ("collapse.jsonl", "collapse_meta.json", "collapse.md", "collapse_heatmap.png"):
        assert (tmp_path / name).stat().st_size > 0
