"""Was the machine steady while a point was timed? Signals read over the point's timing window, and the verdict.

A tight spread is no proof of a steady machine: a burst of contention that lasts the whole window slows every
sample alike. So each window records what the OS and the device say happened during it, plus two probes timed as
more rows of the round-robin, and a point is `disturbed` when any signal passes its threshold. The canary, a
fixed matmul of about 1 ms, sees a slower or busier CPU. The sync probe (CPU, two or more threads), a few small
parallel adds, sees where the host placed this process's CPUs: on a 2-vCPU AMD EPYC guest the host moved them
every few seconds between two placements, and in one the adds took 6.1 us against 4.5 us, 32-256-row matmuls
35 us against 27 us, and sort_group's fine-32x4 train step at 256 tokens 9.0 ms against 6.4 ms, while the 1 ms
matmul did not move. Signals the OS or device lacks are null with a reason, never a guess.

CPU (Linux):
    cpu_pressure_ms   /proc/pressure/cpu `some` total: ms in which a runnable task waited for a CPU
    steal_fraction    /proc/stat steal jiffies / all jiffies: time the hypervisor gave our vCPUs to others
    invol_ctx_switches  getrusage(RUSAGE_SELF).ru_nivcsw: times this process was preempted
    cpu_over_wall     process CPU seconds / wall seconds (up to the thread count when every thread computes)
    loadavg_before / loadavg_after  1-minute load average (recorded only: it lags by a minute)
CUDA (NVML, suites/nvml.py): clock-event reasons seen during the window, SM clock / max, temperature, power.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

from suites.stats import Stats
from suites.timing_settings import TimingSettings

PRESSURE = Path("/proc/pressure/cpu")
PROC_STAT = Path("/proc/stat")


@dataclass(frozen=True)
class Thresholds:
    """Past any of these a point is disturbed (the suite's [timing] table sets them, see TimingSettings)."""

    cpu_pressure_fraction: float
    steal_fraction: float
    ctx_switches_per_s: float
    canary_drift: float
    canary_rel_iqr: float
    sync_drift: float
    sync_rel_iqr: float

    @classmethod
    def of(cls, s: TimingSettings) -> Thresholds:
        return cls(
            cpu_pressure_fraction=s.disturb_cpu_pressure,
            steal_fraction=s.disturb_steal,
            ctx_switches_per_s=s.disturb_ctx_switches_per_s,
            canary_drift=s.disturb_canary_drift,
            canary_rel_iqr=s.disturb_canary_rel_iqr,
            sync_drift=s.disturb_sync_drift,
            sync_rel_iqr=s.disturb_sync_rel_iqr,
        )


def _pressure_us() -> int | None:
    try:
        for line in PRESSURE.read_text().splitlines():
            if line.startswith("some"):
                return int(line.rsplit("total=", 1)[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cpu_jiffies() -> tuple[int, int] | None:
    """(steal, total) jiffies over all CPUs."""
    try:
        fields = PROC_STAT.read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if fields[0] != "cpu" or len(fields) < 9:
        return None
    values = [int(v) for v in fields[1:]]
    return values[7], sum(values[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)


def _loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


@dataclass
class Window:
    """Signals of one timing window: `start()` before the round-robin, `stop()` after it."""

    wall_s: float = 0.0
    signals: dict = field(default_factory=dict)
    missing: dict = field(default_factory=dict)  # signal -> why it is null

    def start(self) -> Window:
        self._t0 = time.perf_counter()
        self._psi0, self._jiffies0 = _pressure_us(), _cpu_jiffies()
        self._usage0 = resource.getrusage(resource.RUSAGE_SELF)
        self._load0 = _loadavg()
        return self

    def stop(self) -> Window:
        self.wall_s = time.perf_counter() - self._t0
        psi, jiffies, usage = _pressure_us(), _cpu_jiffies(), resource.getrusage(resource.RUSAGE_SELF)
        if self._psi0 is None or psi is None:
            self._null("cpu_pressure_ms", f"{PRESSURE} unreadable (not Linux, or PSI disabled)")
        else:
            self.signals["cpu_pressure_ms"] = (psi - self._psi0) / 1e3
        if self._jiffies0 is None or jiffies is None or jiffies[1] == self._jiffies0[1]:
            self._null("steal_fraction", f"{PROC_STAT} unreadable or no jiffies elapsed")
        else:
            self.signals["steal_fraction"] = (jiffies[0] - self._jiffies0[0]) / (jiffies[1] - self._jiffies0[1])
        self.signals["invol_ctx_switches"] = usage.ru_nivcsw - self._usage0.ru_nivcsw
        cpu_s = usage.ru_utime + usage.ru_stime - self._usage0.ru_utime - self._usage0.ru_stime
        self.signals["cpu_over_wall"] = cpu_s / self.wall_s if self.wall_s > 0 else None
        self.signals["loadavg_before"], self.signals["loadavg_after"] = self._load0, _loadavg()
        return self

    def _null(self, name: str, why: str) -> None:
        self.signals[name] = None
        self.missing[name] = why


def canary_verdict(samples_ms: list[float], baseline_ms: float | None, t: Thresholds) -> tuple[dict, list[str]]:
    """The canary's columns, and the reasons it calls the window disturbed. Only a slower canary is one: a
    disturbance can slow a matmul, never speed it up, so a canary faster than the baseline says the baseline
    was timed on a slowed machine (WatchedTimer then takes the faster figure as the baseline)."""
    return probe_verdict("canary", "canary", samples_ms, baseline_ms, t.canary_drift, t.canary_rel_iqr)


def sync_verdict(samples_ms: list[float] | None, baseline_ms: float | None, t: Thresholds) -> tuple[dict, list[str]]:
    """The thread-sync probe's columns and reasons (suites/watch.py sync_row); all null, and no reason, where no
    probe ran (one intra-op thread, or a CUDA run)."""
    if samples_ms is None:
        return dict.fromkeys(("sync_ms", "sync_rel_iqr", "sync_drift", "sync_baseline_ms")), []
    return probe_verdict(
        "sync",
        "thread sync (the host moved this process's CPUs)",
        samples_ms,
        baseline_ms,
        t.sync_drift,
        t.sync_rel_iqr,
    )


def probe_verdict(
    name: str, what: str, samples_ms: list[float], baseline_ms: float | None, drift_limit: float, iqr_limit: float
) -> tuple[dict, list[str]]:
    """A probe's columns ({name}_ms, _rel_iqr, _drift, _baseline_ms) and why it calls the window disturbed:
    a median more than `drift_limit` above the baseline, or an IQR / median above `iqr_limit`."""
    cols = {f"{name}_ms": None, f"{name}_rel_iqr": None, f"{name}_drift": None, f"{name}_baseline_ms": baseline_ms}
    if not samples_ms:
        return cols, [f"{what}: no samples"]
    stats = Stats.of(samples_ms)
    drift = stats.median / baseline_ms - 1 if baseline_ms else None
    reasons = []
    if drift is not None and drift > drift_limit:
        reasons.append(
            f"{what}: {stats.median:.3g} ms vs {baseline_ms:.3g} ms, the run's baseline "
            f"({drift:+.0%}, limit +{drift_limit:.0%})"
        )
    if stats.rel_iqr > iqr_limit:
        reasons.append(f"{what} spread: IQR/median {stats.rel_iqr:.2f} > {iqr_limit:.2f}")
    values = {f"{name}_ms": stats.median, f"{name}_rel_iqr": stats.rel_iqr, f"{name}_drift": drift}
    return cols | values, reasons


def cpu_verdict(window: Window, t: Thresholds) -> list[str]:
    """Reasons the OS's signals call the window disturbed (each: signal, value, threshold)."""
    s, reasons, wall_ms = window.signals, [], window.wall_s * 1e3
    if s.get("cpu_pressure_ms") is not None and wall_ms > 0:
        limit = t.cpu_pressure_fraction * wall_ms
        if s["cpu_pressure_ms"] > limit:
            reasons.append(
                f"cpu pressure: {s['cpu_pressure_ms']:.0f} ms stalled in a {wall_ms:.0f} ms window "
                f"> {limit:.0f} ms ({t.cpu_pressure_fraction:.0%})"
            )
    if s.get("steal_fraction") is not None and s["steal_fraction"] > t.steal_fraction:
        reasons.append(f"cpu steal: {s['steal_fraction']:.1%} of CPU time > {t.steal_fraction:.1%}")
    rate = s["invol_ctx_switches"] / window.wall_s if window.wall_s > 0 else 0.0
    if rate > t.ctx_switches_per_s:
        reasons.append(f"preempted: {rate:.0f} involuntary context switches/s > {t.ctx_switches_per_s:.0f}/s")
    return reasons


# NVML clock-event reason bits that mean the GPU ran slower than asked for a cause outside the workload
# (nvmlClocksEventReason*; idle, application and user-set clocks are not disturbances).
THROTTLE_BITS = {
    0x8: "hw slowdown",
    0x10: "sync boost",
    0x20: "sw thermal slowdown",
    0x40: "hw thermal slowdown",
    0x80: "hw power brake",
}
# The software power cap lowers clocks while the board draws its power limit, which a long GEMM on an H100 does
# by itself: the workload's own steady state, recorded in `gpu_throttle` but no disturbance. Counted as one, it
# would flag every large point of a GPU suite and leave no verdict.
POWER_CAP_BIT, POWER_CAP = 0x4, "sw power cap (the workload at the board's power limit)"


def gpu_verdict(before: dict | None, after: dict | None) -> tuple[dict, list[str]]:
    """Clock-state columns of a window and the reasons it is disturbed: any THROTTLE_BITS bit set before or after."""
    if before is None or after is None:
        return {"gpu_throttle": None, "sm_clock_fraction": None, "temperature_c": None, "power_w": None}, []
    bits = (before.get("reasons") or 0) | (after.get("reasons") or 0)
    seen = [name for bit, name in THROTTLE_BITS.items() if bits & bit]
    clock, top = after.get("sm_clock_mhz"), after.get("sm_clock_max_mhz")
    columns = {
        "gpu_throttle": ([POWER_CAP] if bits & POWER_CAP_BIT else []) + seen,
        "sm_clock_fraction": clock / top if clock and top else None,
        "temperature_c": after.get("temperature_c"),
        "power_w": after.get("power_w"),
    }
    return columns, [f"gpu throttled: {', '.join(seen)} (NVML clock-event reasons)"] if seen else []
