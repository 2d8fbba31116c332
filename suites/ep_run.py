"""Expert-parallel suites on several processes: starting the ranks, measuring on every rank, rows on rank 0.

Two ways in, one set of rows:
- `moe-bench run SUITE [--nproc N]`, not under torchrun: for each world size (the suite's `nproc` list, or N),
  `launch` starts `python -m torch.distributed.run --standalone --nproc-per-node W -m suites run SUITE --out OUT`
  (rendezvous on localhost, free port) and waits for it. Every launch writes into the same OUT; `--resume` makes
  each one skip the rows already there, so an interrupted run is completed by running the same command again.
- `torchrun --nproc-per-node W -m suites run SUITE --out OUT`: the ranks find RANK, WORLD_SIZE and LOCAL_RANK in
  their environment and run the suite's points at world size W (`run_rank`).

On every rank: one process group (gloo on the CPU with one thread per rank; NCCL on CUDA, each rank on the GPU
LOCAL_RANK), `TIMEOUT_S` on every collective so that a hung peer ends in an error, not a hang. At each point all
ranks call `suites.ep_bench.measure_ep_point`; rank 0 gathers the per-rank figures and writes one
`expert_parallel` row (columns in `suites.schema.EP_COLUMNS`). `tokens` is tokens per rank. The row's point_id
also hashes the world size, so the 1, 2 and 4-rank rows of one shape are distinct rows of one results file.

At world size 1, rank 0 first runs the suite's single-process implementations and baselines through the
`Runner` at the same points (the 1-rank references); larger launches measure only `expert_parallel`.

A failing rank prints one line naming itself and the point and exits non-zero; torchrun then stops the other
ranks (and a rank that hangs instead is ended by the collective timeout), and the launcher prints one line
naming the world size and the results directory. Rows written before the failure stay; `--resume` continues.

After each launch rank 0 refits the cost model (`calibrate`) to every expert-parallel row in the directory
and stores it in run.json under `ep_model`; reports read it there (they never import suites).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import statistics
import subprocess
import sys
import traceback
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from moe_impls.expert_parallel import STAGES
from suites import ep_bench
from analysis import flops as F
from analysis.ep_costs import Cluster, ExpertShape, ep_cost, fit_link
from suites.results import RESULTS, ResultsWriter, read_run_meta, write_run_meta
from suites.runner import RTOL, Runner, _now, environment, one_line
from suites.spec import EP_IMPL, Point, Suite, SuiteError, check_world_size
from suites.stats import Stats

# Every collective; a peer that stops answering ends the run after this long. MOE_BENCH_EP_TIMEOUT_S overrides
# it (the tests use a few seconds; a GPU shape whose one point takes minutes needs more).
TIMEOUT_S = float(os.environ.get("MOE_BENCH_EP_TIMEOUT_S", 120))
WARMUP_CALLS = 2  # the first is also the correctness check (see measure_ep_point)
LAUNCHED_ENV = "MOE_BENCH_EP_LAUNCHED"  # set by `launch`: the launcher, not rank 0, prints the summary


def torchrun_env() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when this process was started by torchrun, else None."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))


# ---- `moe-bench run` ------------------------------------------------------------------------------------------
def dispatch(args, suite: Suite, device: torch.device, out: Path, impls: list[str], baselines: list[str]) -> int | None:
    """The expert-parallel branch of `moe-bench run`: an exit status, or None for the plain single-process run."""
    env = torchrun_env()
    try:
        if env is not None:
            return _under_torchrun(args, suite, device, out, impls, baselines, *env)
        if EP_IMPL not in impls:
            if args.nproc is not None:
                raise SuiteError(f"--nproc {args.nproc}: suite {suite.name} has no {EP_IMPL!r} implementation")
            return None
        sizes = [args.nproc] if args.nproc is not None else list(suite.nproc)
        for n in sizes:
            if n < 1:
                raise SuiteError(f"--nproc {n}: expected a positive number of ranks")
            check_world_size(suite.points, n, suite.path)
    except SuiteError as exc:
        print(f"moe-bench: {exc}", file=sys.stderr)
        return 2
    run_args = ["--device", args.device]
    run_args += ["--only", args.only] if args.only else []
    run_args += ["--no-progress"] if args.no_progress else []
    code = launch(suite, out, sizes, run_args)
    _finish(out, args.no_report)
    return code


def _under_torchrun(args, suite, device, out, impls, baselines, rank: int, world_size: int, _local: int) -> int | None:
    if args.nproc is not None:
        raise SuiteError(f"--nproc {args.nproc}: under torchrun the world size is torchrun's ({world_size})")
    if EP_IMPL not in impls:
        if world_size == 1:
            return None
        raise SuiteError(f"suite {suite.name} has no {EP_IMPL!r} implementation to run on {world_size} ranks")
    check_world_size(suite.points, world_size, suite.path)
    if args.out is None and not args.resume:  # every rank must agree on the directory: name it by the run id
        out = Path("results") / f"{suite.name}-{os.environ.get('TORCHELASTIC_RUN_ID', 'torchrun')}"
    code = run_rank(suite, device, out, impls, baselines, progress=not args.no_progress)
    if rank == 0 and not os.environ.get(LAUNCHED_ENV):
        _finish(out, args.no_report)
    return code


def _finish(out: Path, no_report: bool) -> None:
    print(summary_table(out))
    model = (read_run_meta(out).get("ep_model") if (out / "run.json").exists() else None) or {}
    if "error" in model:
        print(f"cost model: not calibrated: {model['error']}")
    for w, e in model.get("comm_error_by_world_size", {}).items():
        rel = f"{e['mean_abs_rel_err']:.0%}" if e["mean_abs_rel_err"] is not None else "n/a"
        print(f"cost model, {w} rank(s): dispatch+combine off by {e['mean_abs_err_ms']:.3g} ms ({rel}) on average")
    print(f"-> {out}")
    if not no_report:
        from reports.render import render_report  # the CLI is the composition root; the runner never renders

        print(f"report: {render_report(out)}")


# ---- the launcher -------------------------------------------------------------------------------------------
def launch(suite: Suite, out: Path, world_sizes: list[int], run_args: list[str]) -> int:
    """Start torchrun once per world size into `out`; 0 when every launch succeeded, else 1 after the first failure.

    `run_args` are the `moe-bench run` options the ranks need besides the suite and --out (e.g. --device, --only).
    """
    for world_size in world_sizes:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={world_size}",
            "--max-restarts=0",
            "-m",
            "suites",
            "run",
            str(suite.path),
            "--out",
            str(out),
            "--no-report",
            *run_args,
        ]
        if (out / RESULTS).exists():
            cmd.append("--resume")
        print(f"moe-bench: {suite.name}: {world_size} rank(s) -> {out}", file=sys.stderr, flush=True)
        # OMP_NUM_THREADS=1 as torchrun would set it (ranks use one thread each), without its banner about it.
        env = {**os.environ, "OMP_NUM_THREADS": "1", LAUNCHED_ENV: "1"}
        rc = subprocess.run(cmd, env=env).returncode
        if rc:
            print(
                f"moe-bench: the run on {world_size} rank(s) failed (exit {rc}); the failing rank's error is above; "
                f"rows measured so far are in {out} (rerun with --out {out} --resume)",
                file=sys.stderr,
            )
            return 1
    return 0


# ---- on every rank ------------------------------------------------------------------------------------------
def run_rank(
    suite: Suite, device: torch.device, out: Path, impls: list[str], baselines: list[str], progress: bool
) -> int:
    """Run `suite` on this torchrun rank at the launch's world size; returns the process exit status."""
    rank, world_size, local_rank = torchrun_env()
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(1)  # one core per rank: 2 ranks on 2 cores do not oversubscribe
    backend = "nccl" if device.type == "cuda" else "gloo"
    if world_size == 1:
        single = [n for n in impls if n != EP_IMPL]
        if single or baselines:
            Runner(suite, device, out, single, baselines, progress=progress).run()
    if EP_IMPL not in impls:
        return 0
    dist.init_process_group(backend, timeout=timedelta(seconds=TIMEOUT_S))
    try:
        _measure_points(suite, device, backend, out, rank, world_size, progress)
        if rank == 0:
            _store_model(out)
        dist.barrier()
    except Exception as exc:
        print(f"moe-bench: rank {rank} of {world_size}: {one_line(exc)}", file=sys.stderr, flush=True)
        if os.environ.get("MOE_BENCH_TRACEBACK"):
            traceback.print_exc()
        os._exit(1)  # skip the process-group teardown, which would wait on the peers; torchrun stops them
    dist.destroy_process_group()
    return 0


def _measure_points(
    suite: Suite, device: torch.device, backend: str, out: Path, rank: int, world_size: int, progress: bool
) -> None:
    writer = ResultsWriter(out) if rank == 0 else None
    todo = [None]
    if rank == 0:
        todo = [[i for i, p in enumerate(suite.points) if (ep_point_id(p, world_size), EP_IMPL) not in writer.done]]
        _write_meta(suite, device, out, backend)
    dist.broadcast_object_list(todo, src=0)
    try:
        for i in todo[0]:
            point = suite.points[i]
            where = f"point {point.shape} T={point.tokens} {point.dtype} {point.routing} on {world_size} rank(s)"
            try:
                result = ep_bench.measure_ep_point(
                    point.moe_config(),
                    point.tokens,
                    getattr(torch, point.dtype),
                    reps=max(suite.timing.min_reps, 1),
                    warmup=WARMUP_CALLS,
                    seed=suite.seed,
                )
            except Exception as exc:
                raise RuntimeError(f"{where}: {one_line(exc)}") from exc
            if rank == 0:
                row = ep_row(point, world_size, backend, device, result["per_rank"])
                writer.write(row)
                if progress:
                    print(f"moe-bench: {where}: {row['latency_ms_median']:.3g} ms", file=sys.stderr, flush=True)
    finally:
        if writer is not None:
            writer.close()


def _write_meta(suite: Suite, device: torch.device, out: Path, backend: str) -> None:
    """run.json: kept from an earlier launch into the same directory, else started here; the launch is appended."""
    if (out / "run.json").exists():
        meta = read_run_meta(out)
    else:
        meta = {
            "suite": suite.name,
            "suite_path": str(suite.path),
            "suite_hash": suite.file_hash,
            "seed": suite.seed,
            "impls": list(suite.impls),
            "baselines": list(suite.baselines),
            "timing": dataclasses.asdict(suite.timing),
            "started": _now(),
            "finished": None,
            **environment(device),
            "peaks": {},
        }
    launches = meta.setdefault("ep_launches", [])
    launches.append({"world_size": dist.get_world_size(), "backend": backend, "started": _now()})
    meta["finished"] = None
    write_run_meta(out, meta)


def ep_point_id(point: Point, world_size: int) -> str:
    """The point's id with the world size hashed in: one row per (point, world size) in one results file."""
    return hashlib.sha1(f"{point.point_id}/world_size={world_size}".encode()).hexdigest()[:12]


def ep_row(point: Point, world_size: int, backend: str, device: torch.device, per_rank: list[dict]) -> dict:
    """One results row from every rank's `measure_ep_point` figures (rank 0's gathered list)."""
    reps = len(per_rank[0]["samples_s"]["total"])
    # A barrier starts each repetition, so a repetition ends when its slowest rank does: that is the pace.
    pace_ms = [max(p["samples_s"]["total"][i] for p in per_rank) * 1e3 for i in range(reps)]
    stats = Stats.of(pace_ms)
    slowest = max(per_rank, key=lambda p: p["median_s"]["total"])
    rows_computed = [sum(p["rows_received"]) for p in per_rank]
    compute_ms = [p["median_s"]["compute"] * 1e3 for p in per_rank]
    cfg = point.moe_config()
    flops = sum(F.moe_flops(cfg, point.tokens, sum(p["rows_sent"]), "forward") for p in per_rank)
    seconds = stats.median * 1e-3
    err = max(p["max_abs_err"] for p in per_rank)
    tolerance = RTOL[point.dtype] * max(max(p["ref_max_abs"] for p in per_rank), 1e-6)
    ok = err <= tolerance
    return {
        **point.columns(),
        "point_id": ep_point_id(point, world_size),
        "device": device.type,
        "world_size": world_size,
        "impl": EP_IMPL,
        "family": "moe",
        "reference": "sort_group",
        "status": "ok" if ok else "wrong",
        "error": None if ok else f"max |out - sort_group on the rank's tokens| = {err:.3g} > {tolerance:.3g}",
        "max_abs_err": err,
        "tolerance": tolerance,
        "timer": "cuda_event" if device.type == "cuda" else "perf_counter",
        "samples_ms": pace_ms,
        **stats.columns(),
        "tokens_per_s": point.tokens * world_size / seconds,
        "flops": flops,
        "tflops": flops / seconds / 1e12,
        "backend": backend,
        "global_tokens": point.tokens * world_size,
        "split_ms": {stage: slowest["median_s"][stage] * 1e3 for stage in STAGES},
        "rank_split_ms": {stage: [p["median_s"][stage] * 1e3 for p in per_rank] for stage in STAGES},
        "rank_latency_ms": [p["median_s"]["total"] * 1e3 for p in per_rank],
        "rank_rows_computed": rows_computed,
        "rank_dispatch_bytes": [p["dispatch_bytes_sent"] for p in per_rank],
        "rank_combine_bytes": [p["combine_bytes_sent"] for p in per_rank],
        "rank_bytes_sent": [
            p["dispatch_bytes_sent"] + p["combine_bytes_sent"] + p["counts_bytes_sent"] for p in per_rank
        ],
        "rank_imbalance": _max_over_mean(rows_computed),
        "compute_imbalance": _max_over_mean(compute_ms),
    }


def _max_over_mean(values: list[float]) -> float | None:
    mean = statistics.fmean(values)
    return max(values) / mean if mean > 0 else None


# ---- the cost model, calibrated by the measured rows ----------------------------------------------------------
def _shape_of(row: dict) -> ExpertShape:
    return ExpertShape(
        row["num_experts"],
        row["top_k"],
        row["d_model"],
        row["d_ff"],
        torch.finfo(getattr(torch, row["dtype"])).bits // 8,
        row["activation"],
    )


def calibrate(rows: list[dict], fit_world_sizes: list[int] | None = None) -> dict:
    """Fit `analysis.ep_costs` to measured expert-parallel rows and predict every row.

    ValueError (one line) when the rows do not determine a link: fewer than two distinct byte counts, or
    times that do not grow with bytes (noise at tiny sizes).

    The link (alpha, bandwidth) is one least-squares fit over the dispatch and the combine of every row at
    a fitted world size (all with 2+ ranks by default): x = mean bytes that left a rank, y = the slowest rank's
    median stage time. The expert rate (FLOP/s) is a through-origin fit of the slowest rank's compute time to
    the FLOPs of the rows it computed, over all rows. Each row is then predicted with `ep_cost` on one node
    (ranks_per_node = world size, so only the fitted link is used); 1-rank rows are predicted no communication,
    and what they measure in dispatch and combine (sorting, the self copy) shows as the absolute error.
    """
    rows = [r for r in rows if r.get("impl") == EP_IMPL and r.get("status") == "ok"]
    multi = [
        r for r in rows if r["world_size"] >= 2 and (fit_world_sizes is None or r["world_size"] in fit_world_sizes)
    ]
    points = []
    for r in multi:
        points.append((statistics.fmean(r["rank_dispatch_bytes"]), r["split_ms"]["dispatch"] / 1e3))
        points.append((statistics.fmean(r["rank_combine_bytes"]), r["split_ms"]["combine"] / 1e3))
    fit = fit_link(points)
    num = den = 0.0
    for r in rows:
        busiest = max(r["rank_rows_computed"])
        work = busiest * _shape_of(r).flops_per_token / r["top_k"]  # FLOPs of the rows the slowest rank computed
        num, den = num + work * work, den + work * r["split_ms"]["compute"] / 1e3
    flops_per_s = num / den if den > 0 else None
    predictions, by_world = [], {}
    for r in rows:
        cluster = Cluster(ranks_per_node=r["world_size"], intra=fit.link, inter=fit.link)
        cost = ep_cost(_shape_of(r), r["tokens"], r["world_size"], cluster, flops_per_s)
        measured_comm = r["split_ms"]["dispatch"] + r["split_ms"]["combine"]
        predicted_comm = cost.comm_s * 1e3
        predictions.append(
            {
                "point_id": r["point_id"],
                "shape": r["shape"],
                "tokens": r["tokens"],
                "dtype": r["dtype"],
                "world_size": r["world_size"],
                "bytes_per_rank": statistics.fmean(r["rank_dispatch_bytes"]),
                "measured_dispatch_ms": r["split_ms"]["dispatch"],
                "measured_combine_ms": r["split_ms"]["combine"],
                "measured_compute_ms": r["split_ms"]["compute"],
                "predicted_dispatch_ms": cost.dispatch_s * 1e3,
                "predicted_combine_ms": cost.combine_s * 1e3,
                "predicted_compute_ms": cost.compute_s * 1e3,
                "measured_compute_to_comm": r["split_ms"]["compute"] / measured_comm if measured_comm > 0 else None,
                "predicted_compute_to_comm": cost.compute_to_comm,
            }
        )
        by_world.setdefault(r["world_size"], []).append((predicted_comm, measured_comm))
    return {
        "link": {"bandwidth_Bps": fit.link.bandwidth_Bps, "latency_s": fit.link.latency_s},
        "fit_rmse_s": fit.rmse_s,
        "fit_points": fit.num_points,
        "fit_world_sizes": sorted({r["world_size"] for r in multi}),
        "flops_per_s": flops_per_s,
        "comm_error_by_world_size": {str(w): _errors(pairs) for w, pairs in sorted(by_world.items())},
        "points": predictions,
    }


def _errors(pairs: list[tuple[float, float]]) -> dict:
    """Mean absolute error (ms) and mean |relative error| of predicted against measured dispatch + combine."""
    return {
        "points": len(pairs),
        "mean_abs_err_ms": statistics.fmean(abs(p - m) for p, m in pairs),
        "mean_abs_rel_err": statistics.fmean(abs(p - m) / m for p, m in pairs if m > 0)
        if any(m > 0 for _, m in pairs)
        else None,
    }


def read_rows(out: Path) -> list[dict]:
    path = out / RESULTS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _store_model(out: Path) -> None:
    """Refit over every expert-parallel row so far; also a hold-out fit on the smallest multi-rank world size."""
    rows = read_rows(out)
    try:
        model = calibrate(rows)
    except ValueError as exc:
        model = {"error": str(exc)}
    sizes = model.get("fit_world_sizes", [])
    if len(sizes) >= 2:
        try:
            held = calibrate(rows, fit_world_sizes=sizes[:1])
            model["holdout"] = {k: held[k] for k in ("fit_world_sizes", "link", "comm_error_by_world_size")}
        except ValueError as exc:
            model["holdout"] = {"error": str(exc)}
    meta = read_run_meta(out)
    meta.update(ep_model=model, finished=_now())
    write_run_meta(out, meta)


def summary_table(out: Path) -> str:
    """Median split (ms) of the slowest rank and bytes per rank at each expert-parallel point and world size."""
    rows = [r for r in read_rows(out) if r.get("impl") == EP_IMPL]
    if not rows:
        return "(no expert-parallel rows)"
    head = f"{'shape':14s} {'T/rank':>7s} {'ranks':>5s} {'total':>8s} " + " ".join(f"{s:>8s}" for s in STAGES)
    lines = [
        "expert parallel: median ms per forward (slowest rank), bytes sent per rank",
        f"{head} {'KiB/rank':>9s} {'imbal':>6s}",
    ]
    for r in sorted(rows, key=lambda r: (r["shape"], r["tokens"], r["dtype"], r["world_size"])):
        if r["status"] != "ok":
            lines.append(f"{r['shape']:14s} {r['tokens']:7d} {r['world_size']:5d} {r['status']}: {r['error']}")
            continue
        split = " ".join(f"{r['split_ms'][s]:8.3f}" for s in STAGES)
        kib = statistics.fmean(r["rank_bytes_sent"]) / 1024
        lines.append(
            f"{r['shape']:14s} {r['tokens']:7d} {r['world_size']:5d} {r['latency_ms_median']:8.3f} {split} "
            f"{kib:9.1f} {r['rank_imbalance'] or 0:6.3f}"
        )
    return "\n".join(lines)
