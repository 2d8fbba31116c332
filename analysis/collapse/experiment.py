"""The collapse experiment end to end: every chosen setting in turn from one seed, timed, into its two files."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from analysis.collapse.output import ROWS_FILE, RunTimes, collapse_meta, write_meta, write_rows
from analysis.collapse.settings import SETTINGS, CollapseConfig, select_settings
from analysis.collapse.train import ClusterRegression, train_setting
from moe_impls import RoutingRecord

SettingStepHook = Callable[[str, int, RoutingRecord], None]


def run_collapse(
    cfg: CollapseConfig, out_dir: Path, settings: list[str] | None = None, on_step: SettingStepHook | None = None
) -> dict:
    """Run every setting, write `collapse.jsonl` and `collapse_meta.json` to out_dir, return the meta dict.

    `on_step(setting, step, routing)` sees each step's routing record as it happens.
    """
    names = select_settings(settings)
    out_dir.mkdir(parents=True, exist_ok=True)
    task = ClusterRegression(cfg)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    with open(out_dir / ROWS_FILE, "w") as f:
        for name in names:
            t0 = time.perf_counter()
            hook = (lambda step, routing, name=name: on_step(name, step, routing)) if on_step else None
            write_rows(f, train_setting(SETTINGS[name], cfg, task, hook))
            seconds[name] = time.perf_counter() - t0
    meta = collapse_meta(cfg, names, RunTimes(time.perf_counter() - start, seconds))
    write_meta(out_dir, meta)
    return meta
