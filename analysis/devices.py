"""Datasheet profiles of the GPUs a suite is planned for (`moe-bench run SUITE --plan --plan-device NAME`).

Dense (no structured sparsity) tensor-core peaks, as NVIDIA's datasheets state them; fp32 is the non-tensor-core
rate, which torch's fp32 matmul uses unless TF32 is allowed. A plan is a prediction from these numbers, never a
measurement: a run measures its own peaks at start-up and reports those.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    memory_bytes: int
    tflops: dict[str, float] = field(repr=False)  # dtype name -> dense matmul TFLOP/s
    bandwidth_gbs: float  # memory bandwidth, GB/s
    launch_us: float  # host cost of one kernel launch (GPU) or one eager op (CPU): the floor of a small call
    weights_init_gbs: float  # how fast the runner draws weights in place on the device, GB/s of weights
    source: str

    def call_ms(self, flops: int, bytes_moved: int, dtype: str, launches: int) -> float:
        """The roofline time of one call, or its launch floor when that is longer: a lower bound."""
        compute = flops / (self.tflops[dtype] * 1e12)
        memory = bytes_moved / (self.bandwidth_gbs * 1e9)
        return max(compute, memory, launches * self.launch_us * 1e-6) * 1e3


# An estimate, not a datasheet figure: torch's Philox normal_ fills a tensor on the device at a fraction of
# the memory bandwidth (compute-bound on the generator); taken low so a plan does not promise too little.
GPU_INIT_GBS = 100.0


def _gpu(name: str, gb: float, bf16: float, fp32: float, gbs: float, source: str) -> DeviceProfile:
    tflops = {"bfloat16": bf16, "float16": bf16, "float32": fp32}
    return DeviceProfile(name, int(gb * 1e9), tflops, gbs, 5.0, GPU_INIT_GBS, f"{source}; weight draws estimated")


PROFILES = {
    p.name: p
    for p in (
        _gpu("h100-80gb", 80, 989.4, 66.9, 3350, "NVIDIA H100 SXM5 datasheet"),
        _gpu("h200", 141, 989.4, 66.9, 4800, "NVIDIA H200 SXM datasheet"),
        _gpu("a100-80gb", 80, 312.0, 19.5, 2039, "NVIDIA A100 80GB SXM datasheet"),
        _gpu("l4", 24, 121.0, 30.3, 300, "NVIDIA L4 datasheet"),
    )
}


def profile(name: str) -> DeviceProfile:
    """The named profile; KeyError (one line, with the known names) for anything else."""
    try:
        return PROFILES[name]
    except KeyError:
        raise KeyError(f"unknown device profile {name!r}; known: {', '.join(PROFILES)}") from None


def measured(name: str, memory_bytes: int, tflops: dict[str, float], bandwidth_gbs: float) -> DeviceProfile:
    """This machine, from the peaks a run measures at start-up (a CPU plan)."""
    return DeviceProfile(name, memory_bytes, tflops, bandwidth_gbs, 10.0, 0.5, "measured on this machine")
