"""Where a run happened, and the run.json it starts with: one function for the runner and the expert-parallel
launcher, so both record the same facts under the same names."""

from __future__ import annotations

import platform
import subprocess
import sys
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import torch

from suites.nvml import NVML
from suites.suite_model import Suite


def now() -> str:
    """The current UTC time as run.json writes it (ISO 8601, seconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def git_commit() -> str | None:
    try:
        here = Path(__file__).parent
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True).stdout
        return sha.stdout.strip() + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device, name: str | None = None, nvml: dict | None = None) -> dict:
    """Where the run happened; `name` and `nvml` are the device's as the worker saw them, so this process never
    opens CUDA (NVML finds its GPU by torch's device properties, which start CUDA)."""
    return {
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "python_version": platform.python_version(),
        "host": platform.node(),
        "device": device.type,
        "device_name": name or device_name(device),
        "cpu_threads": torch.get_num_threads(),
        "nvml": nvml if nvml is not None else NVML(device).info(),
        "argv": sys.argv,
    }


def run_meta(
    suite: Suite,
    device: torch.device,
    impls: list[str] | None = None,
    baselines: list[str] | None = None,
    name: str | None = None,
    nvml: dict | None = None,
    **extra: object,
) -> dict:
    """A new run's run.json: the suite, the rows asked for (the suite's unless given), the [timing] table, the
    environment (`name`: the device's, as the worker saw it), then `extra` (what the measuring process found)."""
    return {
        "suite": suite.name,
        "suite_path": str(suite.path),
        "suite_hash": suite.file_hash,
        "seed": suite.seed,
        "impls": list(suite.impls if impls is None else impls),
        "baselines": list(suite.baselines if baselines is None else baselines),
        "timing": asdict(suite.timing),
        "started": now(),
        "finished": None,
        **environment(device, name, nvml),
        **extra,
    }
