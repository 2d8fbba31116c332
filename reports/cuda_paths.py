"""The gpu-smoke verdict: which CUDA paths a run reached, read from its rows, one line each and one screen.

A path ran only when a row shows it did (a counted kernel, the timer used, a recorded flush, a nonzero energy
reading), never because the suite asked for it: a run that silently fell back to eager timing or to the
per-expert matmul loop says so here.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

RAN, FAILED, NOT_APPLICABLE = "ran", "FAILED", "n/a"


@dataclass(frozen=True)
class CudaPath:
    name: str
    outcome: str  # RAN, FAILED or NOT_APPLICABLE
    evidence: str


def _grouped_mm(df: pd.DataFrame, mode: str) -> CudaPath:
    rows = df[(df["impl"] == "sort_group") & (df["mode"] == mode) & (df["dtype"] == "bfloat16")]
    name = f"grouped_mm {'forward' if mode == 'forward' else 'forward and backward'}, bf16"
    if rows.empty:
        return CudaPath(name, FAILED, f"no bf16 sort_group {mode} row")
    ok = rows[rows["status"] == "ok"]
    calls = pd.to_numeric(ok["grouped_mm_calls"], errors="coerce").dropna().astype(int)
    need = 2 if mode == "forward" else 3  # two projections forward; a train step adds the backward's
    if len(ok) < len(rows) or calls.empty or calls.min() < need:
        seen = ", ".join(sorted({str(c) for c in calls})) or "none counted"
        return CudaPath(name, FAILED, f"{len(ok)} of {len(rows)} sort_group rows ok; aten._grouped_mm calls: {seen}")
    return CudaPath(name, RAN, f"{len(ok)} sort_group rows, {calls.min()}-{calls.max()} aten._grouped_mm calls each")


def _graphs(df: pd.DataFrame) -> CudaPath:
    forward = df[(df["mode"] == "forward") & (df["status"] == "ok")]
    graphed = forward[forward["timer"] == "cuda_graph"]
    if graphed.empty:
        notes = forward["timer_note"].dropna()
        why = notes.iloc[0] if not notes.empty else "no forward row was timed as a graph"
        return CudaPath("CUDA-graph capture and replay", FAILED, why)
    return CudaPath("CUDA-graph capture and replay", RAN, f"{len(graphed)} of {len(forward)} forward rows replayed")


def _flush(df: pd.DataFrame) -> CudaPath:
    ok = df[df["status"] == "ok"]
    flushed = ok[ok["l2_flushed"].fillna(False).astype(bool)]
    if flushed.empty:
        return CudaPath("L2 flush before every timed call", FAILED, f"none of {len(ok)} timed rows flushed")
    return CudaPath("L2 flush before every timed call", RAN, f"{len(flushed)} of {len(ok)} timed rows")


def _energy(df: pd.DataFrame) -> CudaPath:
    ok = df[df["status"] == "ok"]
    joules = pd.to_numeric(ok["energy_j"], errors="coerce")
    read = joules[joules > 0]
    if read.empty:
        notes = ok["energy_note"].dropna()
        return CudaPath("NVML energy", FAILED, notes.iloc[0] if not notes.empty else "no row has an energy reading")
    mj = read * 1e3
    return CudaPath("NVML energy", RAN, f"{len(read)} of {len(ok)} rows, {mj.min():.3g}-{mj.max():.3g} mJ per call")


def _other_run(name: str, df: pd.DataFrame | None, gpus: int, why_absent: str) -> CudaPath:
    """A path that needs a second GPU: its own run's rows, all ok, or not applicable on one GPU."""
    if gpus < 2:
        return CudaPath(name, NOT_APPLICABLE, f"{gpus} GPU present")
    if df is None or df.empty:
        return CudaPath(name, FAILED, why_absent)
    ok = int((df["status"] == "ok").sum())
    return CudaPath(name, RAN if ok == len(df) else FAILED, f"{ok} of {len(df)} rows ok")


def paths(df: pd.DataFrame, gpus: int, second_gpu: pd.DataFrame | None, nccl: pd.DataFrame | None) -> list[CudaPath]:
    """Every CUDA path of the smoke run `df` (a loaded frame), with the cuda:1 and 2-rank NCCL runs' frames."""
    return [
        _grouped_mm(df, "forward"),
        _grouped_mm(df, "train"),
        _graphs(df),
        _flush(df),
        _energy(df),
        _other_run("cuda:1", second_gpu, gpus, "the cuda:1 run measured nothing"),
        _other_run("NCCL, 2 ranks", nccl, gpus, "the 2-rank NCCL run measured nothing"),
    ]


def render(found: list[CudaPath], device_name: str) -> str:
    width = max(len(p.name) for p in found)
    lines = [f"gpu-smoke on {device_name}: which CUDA paths ran"]
    lines += [f"  {p.outcome:<6} {p.name:<{width}}  {p.evidence}" for p in found]
    failed = [p.name for p in found if p.outcome == FAILED]
    skipped = sum(p.outcome == NOT_APPLICABLE for p in found)
    if failed:
        lines.append(f"verdict: {len(failed)} path(s) did not run: {', '.join(failed)}")
    else:
        lines.append(f"verdict: every CUDA path ran ({skipped} not applicable)" if skipped else "verdict: all ran")
    return "\n".join(lines)


def all_ran(found: list[CudaPath]) -> bool:
    return all(p.outcome != FAILED for p in found)
