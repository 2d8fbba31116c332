"""Expert-parallel suites end to end on gloo: the launcher (`--nproc`) and plain torchrun write the same rows;
an indivisible world size, a rank that raises and a rank that hangs each end in one clear line, not a hang.

Each launch starts real processes (a few seconds each); the failures are injected with a `sitecustomize`
module on PYTHONPATH, which every Python process of the launch imports, so the product carries no test hooks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from suites import ep_launch, spec
from suites.cli import main

ROOT = Path(__file__).resolve().parents[2]
TINY = Path(__file__).parent / "data" / "ep_tiny.toml"
KEY = ("point_id", "impl", "world_size", "shape", "tokens", "status")


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def _keys(rows: list[dict]) -> set[tuple]:
    return {tuple(r[k] for k in KEY) for r in rows}


def _env(tmp_path: Path, inject: str | None = None, timeout_s: int = 30) -> dict:
    env = {**os.environ, "MOE_BENCH_EP_TIMEOUT_S": str(timeout_s), "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if inject:
        site = tmp_path / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(inject)
        env["PYTHONPATH"] = f"{site}{os.pathsep}{env['PYTHONPATH']}"
    return env


def _torchrun(nproc: int, out: Path, env: dict) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    cmd += ["-m", "suites", "run", str(TINY), "--out", str(out), "--no-report", "--no-progress"]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_launcher_and_torchrun_write_the_same_rows(tmp_path, monkeypatch):
    monkeypatch.setenv("MOE_BENCH_EP_TIMEOUT_S", "30")
    launched = tmp_path / "launched"
    assert main(["run", str(TINY), "--out", str(launched), "--no-report", "--no-progress"]) == 0
    rows = _rows(launched)
    suite = spec.load(str(TINY))
    assert sorted(r["world_size"] for r in rows) == [1, 1, 2, 2]  # one row per point and world size in nproc
    assert {r["status"] for r in rows} == {"ok"}
    for r in rows:
        w = r["world_size"]
        assert r["backend"] == "gloo" and r["global_tokens"] == r["tokens"] * w
        assert len(r["rank_latency_ms"]) == len(r["rank_bytes_sent"]) == len(r["rank_rows_computed"]) == w
        assert sum(r["rank_rows_computed"]) == r["tokens"] * w * r["top_k"]  # every assignment computed once
        assert set(r["split_ms"]) == {"routing", "dispatch", "compute", "combine"}
        assert r["n_samples"] == suite.timing.min_reps == len(r["samples_ms"])
        assert (sum(r["rank_dispatch_bytes"]) > 0) == (w > 1)  # one rank sends nothing over the wire
        assert r["timer"] == "perf_counter" and r["cache"] == "warm"  # one copy per rank, whatever the suite asks
        assert "l2_flush does not apply on the CPU" in r["timer_note"] and "slowest rank" in r["timer_note"]
    meta = json.loads((launched / "run.json").read_text())
    assert [launch["world_size"] for launch in meta["ep_launches"]] == [1, 2]
    assert "ep_model" in meta

    plain = tmp_path / "torchrun"
    done = _torchrun(2, plain, _env(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    two = [r for r in rows if r["world_size"] == 2]
    assert _keys(_rows(plain)) == _keys(two)
    by_id = {r["point_id"]: r for r in _rows(plain)}
    for r in two:  # routing is seeded: the same rows cross the same ranks whichever way the ranks were started
        assert by_id[r["point_id"]]["rank_bytes_sent"] == r["rank_bytes_sent"]


def test_indivisible_world_size_is_one_line_before_any_launch(tmp_path, capsys):
    assert main(["run", str(TINY), "--out", str(tmp_path / "x"), "--nproc", "3", "--no-report"]) == 2
    err = capsys.readouterr().err.strip()
    assert "num_experts (4) must be divisible by the world size (3)" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "nproc, torchrun_env, says",
    [
        (["--nproc", "2"], {}, "--nproc 2: 2 ranks need 2 GPUs, one each, but torch.cuda.device_count() is 1"),
        ([], {}, f"nproc = [1, 2] in {TINY}: 2 ranks need 2 GPUs, one each, but torch.cuda.device_count() is 1"),
        ([], {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}, "LOCAL_RANK 1: local rank r takes GPU r, but"),
    ],
    ids=["nproc", "suite_nproc", "under_torchrun"],
)
def test_more_ranks_than_gpus_is_one_line_before_any_rank_starts(
    tmp_path, capsys, monkeypatch, nproc, torchrun_env, says
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(ep_launch, "launch", lambda *args: pytest.fail("a rank was launched"))
    for name, value in torchrun_env.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "x"
    assert main(["run", str(TINY), "--device", "cuda", "--out", str(out), "--no-report", *nproc]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"moe-bench: {says}") and len(err.splitlines()) == 1, err
    assert not out.exists()


RAISE = """
import os
if os.environ.get("RANK") == "1":
    import suites.ep_bench as b
    def fail(*args, **kwargs):
        raise RuntimeError("injected failure")
    b.measure_ep_point = fail
"""
HANG = """
import os, time
if os.environ.get("RANK") == "1":
    import suites.ep_bench as b
    def hang(*args, **kwargs):
        time.sleep(600)
    b.measure_ep_point = hang
"""


@pytest.mark.parametrize(
    "inject, blamed",
    [(RAISE, "rank 1 of 2: RuntimeError: point t T=8"), (HANG, "rank 0 of 2: RuntimeError: point t T=8")],
    ids=["rank_raises", "rank_hangs"],
)
def test_failed_rank_ends_the_run_with_one_clear_line(tmp_path, inject, blamed):
    out = tmp_path / "out"
    start = time.monotonic()
    cmd = [sys.executable, "-m", "suites", "run", str(TINY), "--nproc", "2", "--out", str(out), "--no-report"]
    done = subprocess.run(
        cmd, env=_env(tmp_path, inject, timeout_s=5), cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    assert time.monotonic() - start < 60  # the collective timeout (5 s here), not a hang
    assert blamed in done.stderr, done.stderr[-3000:]
    assert "the run on 2 rank(s) failed (exit 1)" in done.stderr
    assert f"--out {out} --resume" in done.stderr


def test_suite_nproc_key_is_checked(tmp_path):
    base = TINY.read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(base.replace("nproc = [1, 2]", "nproc = [1, 3]"))
    with pytest.raises(spec.SuiteError, match=r"nproc = 3: expert_parallel: shape 't': num_experts \(4\)"):
        spec.load(str(bad))
    bad.write_text(base.replace('modes = ["forward"]', 'modes = ["train"]'))
    with pytest.raises(spec.SuiteError, match="forward pass only"):
        spec.load(str(bad))
    bad.write_text(base.replace('impls = ["expert_parallel"]', 'impls = ["sort_group"]'))
    with pytest.raises(spec.SuiteError, match="only a suite with impls containing 'expert_parallel'"):
        spec.load(str(bad))
    assert spec.load(str(TINY)).nproc == (1, 2)
    assert spec.load("ep").nproc == (1, 2, 4)
