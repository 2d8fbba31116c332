"""Memory columns: the weight gradients a train call leaves, split from its activations and checked against the
real p.grad tensors; the CUDA reserved figure and the free memory against a fake allocator (CPU cannot reach
the real one; the last test, on a GPU, does)."""

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from suites import point_runner, spec
from suites.calls import call_for_timing
from suites.checks import PointInputs
from suites.memory import available_bytes, measure_memory
from suites.timing_settings import TimingSettings
from suites.worker import WorkerSpec

QUICK = TimingSettings(budget_ms=5, min_time_ms=1, warmup_ms=1, retimes=0, energy_ms=0)
PEAKS = {"matmul_tflops": {"float32": 1.0}, "bandwidth_gbs": 10.0}
TINY = Path(__file__).parent / "data" / "tiny.toml"
MIB = 2**20


def _grad_bytes_after_a_train_call(layer: nn.Module, x: torch.Tensor, grad_out: torch.Tensor) -> int:
    """The bytes of the p.grad tensors one train call of `layer` leaves, counted by hand."""
    step, reset = call_for_timing(layer, x, grad_out, "train")
    step()
    total = sum(p.grad.numel() * p.grad.element_size() for p in layer.parameters() if p.grad is not None)
    reset()
    return total


def _keeping(check: Callable, layers: dict[str, tuple]) -> Callable:
    """`check` (check_moe or check_dense) that also keeps each checked layer with its point's input."""

    def keep(impl: str, *args):
        checked = check(impl, *args)
        inputs = next(a for a in args if isinstance(a, PointInputs))
        layers[impl] = (checked.layers[0], inputs.x, inputs.grad_out)
        return checked

    return keep


@pytest.fixture(scope="module")
def tiny_rows() -> dict[str, list[tuple[dict, int]]]:
    """{mode: [(row, real gradient bytes of its layer)]}: the tiny suite's points run in-process by the real
    PointRunner, each checked layer kept to be called once more afterwards."""
    suite = spec.load(str(TINY))
    layers: dict[str, tuple] = {}
    patch = pytest.MonkeyPatch()
    for name in ("check_moe", "check_dense"):
        patch.setattr(point_runner, name, _keeping(getattr(point_runner, name), layers))
    runner = point_runner.PointRunner(WorkerSpec("cpu", 1, suite.seed, QUICK, peaks=PEAKS))
    rows: dict[str, list[tuple[dict, int]]] = {}
    try:
        for point in suite.points:
            for row in runner.run(point, [*suite.impls, *suite.baselines]):
                assert row["status"] == "ok", row["error"]
                rows.setdefault(point.mode, []).append((row, _grad_bytes_after_a_train_call(*layers[row["impl"]])))
    finally:
        patch.undo()
    return rows


def test_a_train_rows_grad_bytes_are_the_real_weight_gradients(tiny_rows):
    for row, real in tiny_rows["train"]:
        assert real > 0 and row["grad_bytes"] == real, row["impl"]


def test_train_activations_and_gradients_add_up_to_the_calls_peak(tiny_rows):
    for row, _ in tiny_rows["train"]:
        call_peak = row["peak_mem_bytes"] - row["weight_bytes"] - row["tokens"] * row["d_model"] * 4  # float32 x
        assert row["activation_bytes"] >= 0 and row["activation_bytes"] + row["grad_bytes"] == call_peak, row["impl"]


def test_a_forward_row_has_no_grad_bytes_and_all_its_peak_is_activations(tiny_rows):
    for row, _ in tiny_rows["forward"]:
        call_peak = row["peak_mem_bytes"] - row["weight_bytes"] - row["tokens"] * row["d_model"] * 4
        assert row["grad_bytes"] is None and row["activation_bytes"] == call_peak, row["impl"]


def test_only_the_parameters_a_call_reached_count_as_its_gradients():
    layer = nn.ModuleDict({"used": nn.Linear(8, 4), "unused": nn.Linear(8, 4), "frozen": nn.Linear(4, 4)})
    layer["frozen"].requires_grad_(False)
    x = torch.randn(3, 8)

    def step():
        layer["frozen"](layer["used"](x)).sum().backward()
        layer.zero_grad(set_to_none=True)  # as check_call does: the gradients are gone when the call returns

    _, mem = measure_memory(step, torch.device("cpu"), layer)
    assert mem.grad_bytes == (8 * 4 + 4) * 4  # `used`'s weight and bias, float32
    assert mem.call_peak_bytes >= mem.grad_bytes


class FakeAllocator:
    """torch.cuda's allocator statistics for one device, driven by hand: `cached` bytes of free blocks that
    earlier calls left reserved, on top of `live` allocated bytes in their own segments."""

    def __init__(self, live: int, cached: int, driver_free: int) -> None:
        self.allocated, self.reserved, self.driver_free = live, live + cached, driver_free
        self.peak_allocated, self.peak_reserved = live, 2 * (live + cached)  # a bigger earlier call's high water
        self.synced = 0

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        fakes = {
            "synchronize": self.synchronize,
            "empty_cache": self.empty_cache,
            "reset_peak_memory_stats": self.reset_peak_memory_stats,
            "memory_allocated": lambda device=None: self.allocated,
            "memory_reserved": lambda device=None: self.reserved,
            "max_memory_allocated": lambda device=None: self.peak_allocated,
            "max_memory_reserved": lambda device=None: self.peak_reserved,
            "mem_get_info": lambda device=None: (self.driver_free, 80 * 2**30),
        }
        for name, fake in fakes.items():
            monkeypatch.setattr(torch.cuda, name, fake)

    def synchronize(self, device=None) -> None:
        self.synced += 1

    def empty_cache(self) -> None:
        self.reserved = self.allocated  # live tensors fill their segments exactly, in this fake

    def reset_peak_memory_stats(self, device=None) -> None:
        self.peak_allocated, self.peak_reserved = self.allocated, self.reserved

    def allocate(self, nbytes: int, segment: int = 512) -> None:
        """From the cached free blocks if they fit, else from a new segment of `segment` bytes."""
        if self.reserved - self.allocated < nbytes:
            self.reserved += segment
        self.allocated += nbytes
        self.peak_allocated = max(self.peak_allocated, self.allocated)
        self.peak_reserved = max(self.peak_reserved, self.reserved)

    def free(self, nbytes: int) -> None:
        self.allocated -= nbytes  # stays reserved: the caching allocator keeps the block


def test_cuda_reserved_is_what_the_call_made_the_allocator_reserve(monkeypatch):
    fake = FakeAllocator(live=1000, cached=4000, driver_free=10_000)
    fake.install(monkeypatch)

    def call():
        fake.allocate(300)  # the 4000 cached bytes would hold it, were they not emptied first: a new segment
        fake.allocate(200)  # fits in the rest of that segment
        fake.free(300)
        return "out"

    result, mem = measure_memory(call, torch.device("cuda", 0), nn.Linear(2, 2))
    assert result == "out" and mem.kind == "cuda" and fake.synced >= 2
    assert mem.call_peak_bytes == 500  # both live together, on top of the 1000 live before
    assert mem.reserved_bytes == 512  # not the 5000 the cache held, nor the 10000 of an earlier high water
    assert mem.grad_bytes == 0


def test_cuda_available_bytes_count_the_allocators_free_cached_blocks(monkeypatch):
    FakeAllocator(live=1000, cached=4000, driver_free=10_000).install(monkeypatch)
    assert available_bytes(torch.device("cuda", 0)) == 10_000 + 4000


@pytest.mark.gpu
def test_the_real_allocator_sees_a_known_allocation():
    device = torch.device("cuda", torch.cuda.current_device())
    torch.empty(256 * MIB, dtype=torch.uint8, device=device)  # freed at once: cached, until the measure empties it
    free = available_bytes(device)
    _, mem = measure_memory(lambda: torch.empty(64 * MIB, dtype=torch.uint8, device=device), device, nn.Linear(1, 1))
    assert mem.call_peak_bytes == 64 * MIB and 64 * MIB <= mem.reserved_bytes < 128 * MIB
    assert free >= 256 * MIB and mem.grad_bytes == 0
