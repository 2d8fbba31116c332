"""GPU environment and energy through NVML (`import pynvml`, from nvidia-ml-py).

Everything degrades to a recorded reason: no pynvml, no driver, no GPU or a counter the GPU lacks is
written down as unavailable, never raised.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class Energy:
    joules_per_call: float | None
    note: str | None


class NVML:
    """One initialised NVML session bound to the GPU torch is using; `available` False with `reason` otherwise."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.available, self.reason, self.handle, self._nvml = False, None, None, None
        if device.type != "cuda":
            self.reason = "not a CUDA device"
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            self.handle = _handle(pynvml, device)
            self._nvml, self.available = pynvml, True
        except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, NVMLError_DriverNotLoaded, ...
            self.reason = f"NVML unavailable: {type(exc).__name__}: {exc}"

    def info(self) -> dict:
        """Name, driver, memory, clocks, power limit and temperature; each field None when the GPU lacks it."""
        if not self.available:
            return {"available": False, "reason": self.reason}
        n, h = self._nvml, self.handle
        fields: dict[str, Callable[[], object]] = {
            "name": lambda: n.nvmlDeviceGetName(h),
            "driver": lambda: n.nvmlSystemGetDriverVersion(),
            "memory_total_bytes": lambda: n.nvmlDeviceGetMemoryInfo(h).total,
            "sm_clock_mhz": lambda: n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM),
            "sm_clock_max_mhz": lambda: n.nvmlDeviceGetMaxClockInfo(h, n.NVML_CLOCK_SM),
            "power_limit_w": lambda: n.nvmlDeviceGetEnforcedPowerLimit(h) / 1e3,
            "temperature_c": lambda: n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU),
        }
        out: dict[str, object] = {"available": True}
        for key, read in fields.items():
            try:
                value = read()
                out[key] = value.decode() if isinstance(value, bytes) else value
            except Exception:
                out[key] = None
        return out

    def clock_state(self) -> dict | None:
        """Clock-event (throttle) reasons now, SM clock against its maximum, temperature and power; None without
        NVML. A reason bit is set while the GPU runs below its requested clocks for that cause (nvbench's check).
        """
        if not self.available:
            return None
        n, h = self._nvml, self.handle
        reads: dict[str, Callable[[], object]] = {
            "reasons": lambda: n.nvmlDeviceGetCurrentClocksEventReasons(h),
            "sm_clock_mhz": lambda: n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM),
            "sm_clock_max_mhz": lambda: n.nvmlDeviceGetMaxClockInfo(h, n.NVML_CLOCK_SM),
            "temperature_c": lambda: n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU),
            "power_w": lambda: n.nvmlDeviceGetPowerUsage(h) / 1e3,
        }
        out: dict = {}
        for key, read in reads.items():
            try:
                out[key] = read()
            except Exception:
                out[key] = None
        return out

    def energy_mj(self) -> int | None:
        if not self.available:
            return None
        try:
            return int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))
        except Exception:
            return None

    def measure_energy(self, fn: Callable[[], object], min_ms: float) -> Energy:
        """Joules per call over a loop of at least `min_ms`, from the total-energy counter (mJ)."""
        if not self.available:
            return Energy(None, self.reason)
        if min_ms <= 0:
            return Energy(None, "energy loop disabled (energy_ms = 0)")
        torch.cuda.synchronize()
        before, start, calls = self.energy_mj(), time.perf_counter(), 0
        if before is None:
            return Energy(None, "total-energy counter not supported by this GPU")
        while (time.perf_counter() - start) * 1e3 < min_ms or calls == 0:
            fn()
            calls += 1
            if calls % 8 == 0:
                torch.cuda.synchronize()
        torch.cuda.synchronize()
        after = self.energy_mj()
        if after is None or after <= before:
            return Energy(None, "energy counter did not move during the loop (too short)")
        return Energy((after - before) / 1e3 / calls, None)


def _handle(pynvml, device: torch.device):
    """The NVML handle of the GPU torch calls `device`, found by its PCI address.

    torch and NVML number GPUs differently under CUDA_VISIBLE_DEVICES, so the index is only the fallback for a
    torch that does not report the PCI address (its pci_* fields are integers; NVML wants "dddddddd:bb:dd.0").
    """
    props = torch.cuda.get_device_properties(device)
    pci = [getattr(props, f"pci_{k}_id", None) for k in ("domain", "bus", "device")]
    if all(isinstance(v, int) for v in pci):
        domain, bus, dev = pci
        try:
            return pynvml.nvmlDeviceGetHandleByPciBusId(f"{domain:08x}:{bus:02x}:{dev:02x}.0")
        except Exception:  # an NVML that cannot resolve it: fall back to the index
            pass
    return pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
