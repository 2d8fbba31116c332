"""Expert parallel on 2 GPUs over NCCL, launched as `moe-bench run SUITE --device cuda --nproc 2` launches it
(suites/ep_launch.py: torchrun, one rank per GPU). tests/suites/test_ep_run.py runs the same launcher on gloo.
Skipped without two GPUs and NCCL.

Fails when the NCCL path did not run: every row must record backend nccl on CUDA, match single-process
sort_group on its rank's tokens (status ok), and have sent rows between the ranks.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from suites.cli import main

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs: one NCCL rank on each"),
    pytest.mark.skipif(not dist.is_available() or not dist.is_nccl_available(), reason="torch built without NCCL"),
]

SUITE = Path(__file__).parent / "data" / "ep_nccl.toml"


def test_two_nccl_ranks_write_ok_rows(tmp_path):
    out = tmp_path / "run"
    assert (
        main(["run", str(SUITE), "--device", "cuda", "--nproc", "2", "--out", str(out), "--no-report", "--no-progress"])
        == 0
    )
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["dtype"] for r in rows) == ["bfloat16", "float32"]
    for r in rows:
        assert r["status"] == "ok", r["error"]
        assert (r["backend"], r["device"], r["world_size"]) == ("nccl", "cuda", 2)
        assert all(sent > 0 for sent in r["rank_dispatch_bytes"])  # both ranks sent rows over NCCL
        assert sum(r["rank_rows_computed"]) == r["tokens"] * 2 * r["top_k"]
    launches = json.loads((out / "run.json").read_text())["ep_launches"]
    assert [(launch["world_size"], launch["backend"]) for launch in launches] == [(2, "nccl")]
