"""Synthetic runs in the results format of suites/schema.py, for testing reports without running a benchmark.

Latencies follow a roofline model (max(flops / peak, bytes / bandwidth)) times a per-implementation overhead,
with log-normal noise and a few slow outliers, so plots and verdicts see realistic shapes. Some points are
wrong, oom, error or skipped, as a real sweep has.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from suites.schema import RESULT_COLUMNS, SCHEMA_VERSION

PEAKS = {"matmul_tflops": {"bfloat16": 750.0, "float32": 48.0}, "bandwidth_gbs": 2900.0}
BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
IMPLS = ("loop", "padded", "sort_group", "dense_all", "param_matched", "flop_matched")
SHAPES = ((512, 1024, 8, 2), (4096, 14336, 8, 2))
SKEWS = ("zipf1.2", "hot0.5", "collapse")


def meta(**overrides) -> dict:
    m = {
        "schema_version": SCHEMA_VERSION,
        "suite": "synthetic",
        "suite_hash": "abc123",
        "seed": 0,
        "git_commit": "0123456789abcdef",
        "torch_version": "2.11.0",
        "cuda_version": "12.8",
        "device": "cuda",
        "device_name": "Synthetic H100",
        "started": "2025-01-01T00:00:00+00:00",
        "finished": "2025-01-01T00:10:00+00:00",
        "nvml": {"available": True, "driver_version": "570.00"},
        "peaks": PEAKS,
    }
    m.update(overrides)
    return m


def expert_probs(routing: str, n: int, k: int) -> np.ndarray:
    if routing.startswith("zipf"):
        p = 1.0 / np.arange(1, n + 1) ** float(routing[4:])
    elif routing.startswith("hot"):
        hot = float(routing[3:])
        p = np.full(n, (1 - hot) / (n - 1))
        p[0] = hot
    elif routing == "collapse":
        p = np.r_[np.ones(k), np.full(n - k, 1e-9)]
    else:
        p = np.ones(n)
    return p / p.sum()


def summarise(row: dict, samples: np.ndarray) -> None:
    """Fill the latency and derived columns of `row` from `samples` (ms), as the runner would."""
    s = np.asarray(samples, dtype=float)
    med = float(np.median(s))
    q25, q75 = np.percentile(s, [25, 75])
    row.update(
        samples_ms=s.tolist(),
        n_samples=len(s),
        latency_ms_median=med,
        latency_ms_mean=float(s.mean()),
        latency_ms_min=float(s.min()),
        latency_ms_p10=float(np.percentile(s, 10)),
        latency_ms_p90=float(np.percentile(s, 90)),
        latency_ms_p99=float(np.percentile(s, 99)),
        latency_ms_iqr=float(q75 - q25),
        rel_iqr=float((q75 - q25) / med),
        tokens_per_s=row["tokens"] / (med / 1e3),
        tflops=row["flops"] / (med / 1e3) / 1e12,
    )
    row["peak_fraction"] = row["tflops"] / PEAKS["matmul_tflops"].get(row["dtype"], 1.0)
    if row.get("energy_j") is not None:
        row["joules_per_token"] = row["energy_j"] / row["tokens"]


def _row(rng, noise, shape, tokens, impl, routing, dtype, mode, n_samples, energy) -> dict:
    d, f, e, k = shape
    b = BYTES[dtype]
    width = 3  # swiglu: gate, up, down
    counts = rng.multinomial(tokens * k, expert_probs(routing, e, k))
    skew = float(counts.max() / counts.mean())
    touched = int((counts > 0).sum())
    fwd = 3.0 if mode == "train" else 1.0
    if impl == "param_matched":
        flops, wbytes = 2 * tokens * width * d * f * e, width * d * f * e * b
    elif impl == "flop_matched":
        flops, wbytes = 2 * tokens * width * d * f * k, width * d * f * k * b
    else:
        flops, wbytes = 2 * tokens * (width * d * f * k + d * e), width * d * f * touched * b
    flops *= fwd
    io = 2 * tokens * d * b
    bound = max(flops / (PEAKS["matmul_tflops"][dtype] * 1e12), (wbytes + io) / (PEAKS["bandwidth_gbs"] * 1e9)) * 1e3
    factor, launch = {
        "loop": (1.25, 0.012 * e),
        "padded": (1.2 * skew, 0.02),
        "sort_group": (1.1 + 0.05 * (skew - 1), 0.015),
        "dense_all": (1.1 * e / k, 0.01),
    }.get(impl, (1.08, 0.005))
    median = bound * factor + launch * fwd
    samples = median * noise.lognormal(0.0, 0.03, n_samples)
    samples[noise.random(n_samples) < 0.03] *= 1.5
    moe = impl not in ("param_matched", "flop_matched")
    peak = wbytes * (1.0 if impl != "param_matched" else 1.0) + io * (4 if moe else 2) * (2 if mode == "train" else 1)
    row = dict.fromkeys(RESULT_COLUMNS)
    row.update(
        point_id=hashlib.sha1(repr((shape, tokens, dtype, mode, routing)).encode()).hexdigest()[:12],
        impl=impl,
        family="moe" if moe else "dense",
        tokens=tokens,
        d_model=d,
        d_ff=f,
        num_experts=e,
        top_k=k,
        activation="swiglu",
        dtype=dtype,
        mode=mode,
        router="softmax_topk",
        routing=routing,
        capacity_factor=None,
        device="cuda",
        world_size=1,
        status="ok",
        max_abs_err=1e-3 if moe else None,
        tolerance=2e-2,
        timer="cuda_graph" if tokens <= 16 else "cuda_event",
        flops=float(flops),
        bytes_min=float(wbytes + io),
        arith_intensity=flops / (wbytes + io),
        bound_ms=bound,
        mem_kind="cuda",
        weight_bytes=float(width * d * f * e * b if moe else wbytes),
        peak_mem_bytes=float(peak + (width * d * f * e * b - wbytes if moe else 0)),
        energy_j=float(median * 0.7) if energy else None,
        energy_note=None if energy else "NVML energy counter unsupported on this device",
    )
    if mode == "train":  # the weight gradients the call leaves, on top of the forward's peak
        row["grad_bytes"] = row["weight_bytes"]
        row["peak_mem_bytes"] += row["grad_bytes"]
    row["activation_bytes"] = row["peak_mem_bytes"] - row["weight_bytes"] - (row["grad_bytes"] or 0) - io / 2
    if moe:
        mean = counts.mean()
        row.update(
            tokens_per_expert=counts.tolist(),
            load_cv=float(counts.std() / mean),
            load_max_over_mean=skew,
            dropped_fraction=0.0,
            computed_rows=int(
                counts.max() * e if impl == "padded" else tokens * e if impl == "dense_all" else tokens * k
            ),
        )
        row["padded_fraction"] = 1 - tokens * k / row["computed_rows"]
    summarise(row, samples)
    return row


def make_rows(
    seed: int = 0,
    shapes=SHAPES[:1],
    dtypes=("bfloat16",),
    modes=("forward",),
    tokens=(1, 16, 256, 4096),
    skew_tokens: int | None = 256,
    impls=IMPLS,
    n_samples: int = 40,
    energy: bool = False,
    failures: bool = True,
    noise_seed: int | None = None,
) -> list[dict]:
    """`seed` fixes the routing (hence every true median); `noise_seed` (default: seed) only the sample noise."""
    rng = np.random.default_rng(seed)
    noise = np.random.default_rng(seed if noise_seed is None else noise_seed)
    rows = []
    for shape in shapes:
        for dtype in dtypes:
            for mode in modes:
                points = [(t, "softmax_topk") for t in tokens]
                if skew_tokens is not None:
                    points += [(skew_tokens, s) for s in SKEWS]
                for t, routing in points:
                    for impl in impls:
                        rows.append(_row(rng, noise, shape, t, impl, routing, dtype, mode, n_samples, energy))
    if failures:
        plant_failures(rows)
    return rows


def fail(row: dict, status: str, reason: str) -> None:
    keep = {c: row[c] for c in ("point_id", "impl", "family", "tokens", "d_model", "d_ff", "num_experts", "top_k")}
    keep.update({c: row[c] for c in ("activation", "dtype", "mode", "router", "routing", "device", "world_size")})
    row.clear()
    row.update(dict.fromkeys(RESULT_COLUMNS), **keep, status=status, error=reason)


def plant_failures(rows: list[dict]) -> None:
    """One wrong, one oom, one error and one skipped point, at different places of the sweep."""
    by = {(r["impl"], r["tokens"], r["routing"]): r for r in rows}
    plan = [
        (("padded", 16, "softmax_topk"), "wrong", "max_abs_err 0.31 > tolerance 0.02"),
        (("param_matched", 4096, "softmax_topk"), "oom", "CUDA out of memory: tried to allocate 3.50 GiB"),
        (("loop", 256, "hot0.5"), "error", "RuntimeError: index out of range in self"),
        (("dense_all", 256, "collapse"), "skipped", "dense_all skipped: collapse routing is not informative for it"),
    ]
    for key, status, reason in plan:
        if key in by:
            fail(by[key], status, reason)


def large_rows(n_rows: int, seed: int = 0, n_samples: int = 20) -> Iterator[dict]:
    """About `n_rows` rows, the scale of a long sweep: named layers (equal dimensions recur under other names),
    each at 14 token counts and 3 skews in bfloat16 and float32, forward and train, every IMPLS row at each point;
    1% of rows fail and 0.5% of points are timed on a disturbed machine."""
    rng = np.random.default_rng(seed)
    dims = itertools.cycle(itertools.product((256, 1024, 4096), (512, 2048), (8, 16, 64), (1, 2, 4)))
    per_layer = 4 * 17 * len(IMPLS)
    for layer in range(-(-n_rows // per_layer)):
        name = f"layer-{layer:05d}"
        rows = make_rows(
            seed=seed + layer,
            shapes=(next(dims),),
            dtypes=("bfloat16", "float32"),
            modes=("forward", "train"),
            tokens=tuple(2**i for i in range(14)),
            n_samples=n_samples,
            failures=False,
        )
        disturbed = {r["point_id"] for r in rows if rng.random() < 0.005 / len(IMPLS)}
        for row in rows:
            if rng.random() < 0.01:
                fail(row, "error", "RuntimeError: synthetic failure")
            row["disturbed"] = row["point_id"] in disturbed if row["status"] == "ok" else None
            row["disturbance"] = ["cpu pressure: 180 ms stalled > 50 ms"] if row["disturbed"] else None
            row["cache"] = "cold"
            row["shape"] = name
            row["point_id"] = hashlib.sha1(f"{name} {row['point_id']}".encode()).hexdigest()[:12]
            yield row


def write_run(run_dir: Path, rows: Iterable[dict], run_meta: dict | None = None) -> Path:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.json").write_text(json.dumps(run_meta or meta()))
    with (run_dir / "results.jsonl").open("w") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    return run_dir


def scaled(rows: list[dict], factor: float, impls=None) -> list[dict]:
    """A copy of `rows` where the samples of `impls` (all when None) are multiplied by `factor`."""
    out = []
    for row in rows:
        row = dict(row)
        if row["status"] == "ok" and (impls is None or row["impl"] in impls):
            summarise(row, np.asarray(row["samples_ms"]) * factor)
        out.append(row)
    return out


if __name__ == "__main__":  # python -m tests.reports.synth DIR --rows 200000: a large run to time reports on
    parser = argparse.ArgumentParser(description="write a synthetic run directory (run.json + results.jsonl)")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(write_run(args.run_dir, large_rows(args.rows, args.seed), meta(timing={"cache": "cold"})))
