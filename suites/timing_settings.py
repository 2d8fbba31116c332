"""A suite's [timing] settings, apart from the protocol that follows them (suites/timing.py): how long each
row is timed, in which cache state, with which timer, and when a point counts as disturbed."""

from __future__ import annotations

from dataclasses import dataclass, field

CACHE_STATES = ("cold", "warm")


@dataclass(frozen=True)
class TimingSettings:
    """A suite's [timing] table. Bounds (checked by suites/spec_fields.py): every *_ms value finite, 0 to 600000;
    1 <= max_reps <= 100000 and min_reps <= max_reps; every other number finite and >= 0."""

    budget_ms: float = field(default=400.0, metadata={"help": "most wall time spent timing one row (<= 600000)"})
    min_time_ms: float = field(default=40.0, metadata={"help": "keep sampling at least this long"})
    warmup_ms: float = field(default=20.0, metadata={"help": "untimed calls first, at least two"})
    min_reps: int = field(default=5, metadata={"help": "fewest samples kept (<= max_reps)"})
    max_reps: int = field(default=2000, metadata={"help": "most samples kept (<= 100000)"})
    rel_iqr_target: float = field(default=0.05, metadata={"help": "stop once IQR / median is below this"})
    cache: str = field(
        default="cold",
        metadata={
            "help": "cold: weights and input out of cache at every call (CPU: rotating copies; CUDA: L2 "
            "flush); warm: calls back to back on the same data"
        },
    )
    cold_max_mb: float = field(
        default=4096.0, metadata={"help": "CPU, cold: most MB of weight and input copies one point may build"}
    )
    block_ms: float = field(
        default=20.0, metadata={"help": "timed calls of one row per round fill about this long (1 to 64 calls)"}
    )
    l2_flush: bool = field(default=True, metadata={"help": "CUDA, cold: zero a buffer twice the L2 before each call"})
    cuda_graph: bool = field(default=False, metadata={"help": "CUDA, forward mode: replay a captured graph"})
    energy_ms: float = field(default=500.0, metadata={"help": "CUDA with NVML: length of the energy loop; 0 = off"})
    retimes: int = field(default=2, metadata={"help": "times a disturbed point is timed again before it is flagged"})
    retime_pause_s: float = field(default=2.0, metadata={"help": "pause before timing a disturbed point again"})
    disturb_cpu_pressure: float = field(
        default=0.1,
        metadata={
            "help": "disturbed when runnable tasks waited for a CPU (/proc/pressure/cpu some) more than "
            "this fraction of the timing window"
        },
    )
    disturb_steal: float = field(default=0.05, metadata={"help": "disturbed past this fraction of steal time"})
    disturb_ctx_switches_per_s: float = field(
        default=200.0, metadata={"help": "disturbed past this many involuntary context switches per second"}
    )
    disturb_canary_drift: float = field(
        default=0.15,
        metadata={
            "help": "disturbed when the canary's median is this much above the run's baseline (a clean window "
            "this much below it becomes the baseline: the start was the slowed one)"
        },
    )
    disturb_canary_rel_iqr: float = field(
        default=0.25, metadata={"help": "disturbed when the canary's IQR / median exceeds this"}
    )
    disturb_sync_drift: float = field(
        default=0.15,
        metadata={
            "help": "CPU: disturbed when the thread-sync probe's median is this much above the run's baseline "
            "(the host moved this process's CPUs; a clean window this much below it becomes the baseline)"
        },
    )
    disturb_sync_rel_iqr: float = field(
        default=0.25, metadata={"help": "CPU: disturbed when the thread-sync probe's IQR / median exceeds this"}
    )
    timeout_s: float = field(
        default=300.0,
        metadata={
            "help": "most seconds a point's setup or one row's check may take, and a row's share of timing "
            "beyond its budget; past it the row is recorded as `timeout` and the sweep goes on"
        },
    )

    def __post_init__(self) -> None:
        if self.cache not in CACHE_STATES:
            raise ValueError(f"cache = {self.cache!r}: expected one of {', '.join(CACHE_STATES)}")
