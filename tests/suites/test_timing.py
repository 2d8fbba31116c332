"""The order of time_rows' steps on CUDA, checked on CPU: the CUDA work itself (capture, events, synchronise)
is faked, since CPU cannot reach it; the real paths run in tests/suites/test_gpu.py."""

import time

import pytest
import torch

from suites import cuda_timing
from suites.timing import RowCalls, time_rows
from suites.timing_settings import TimingSettings

SETTINGS = TimingSettings(budget_ms=5, min_time_ms=1, warmup_ms=0, min_reps=2, max_reps=2, cuda_graph=True)
CUDA = torch.device("cuda")


class _FakeEvent:
    """A CUDA event as host time: what CPU can reach of `torch.cuda.Event`."""

    def __init__(self, enable_timing: bool = False) -> None:
        self.at = 0.0

    def record(self) -> None:
        self.at = time.perf_counter()

    def elapsed_time(self, end: "_FakeEvent") -> float:
        return (end.at - self.at) * 1e3


class _FakeCuda:
    """time_rows believes it is on CUDA: no-op synchronise, host-time events, and a capture that fails for the
    row named `uncapturable`. Every call and capture lands in `events` as (kind, row)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[tuple[str, str]] = []
        self.names: dict = {}  # a row's call -> its name, for the capture
        monkeypatch.setattr(cuda_timing, "capture_graph", self.capture)
        monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
        monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)

    def row(self, name: str, **kwargs) -> RowCalls:
        def call() -> None:
            self.events.append(("call", name))

        self.names[call] = name
        return RowCalls([call], **kwargs)

    def capture(self, fn):
        name = self.names[fn]
        self.events.append(("capture", name))
        if name == "uncapturable":
            raise RuntimeError("operation not permitted when stream is capturing\nsecond line")
        return lambda: self.events.append(("call", name))


@pytest.fixture
def cuda(monkeypatch) -> _FakeCuda:
    return _FakeCuda(monkeypatch)


def test_every_capture_precedes_every_warm_up_and_a_failed_capture_times_eagerly(cuda):
    graph_ok = {"graphed": True, "train": False, "uncapturable": True, "also_graphed": True}
    rows = {name: cuda.row(name, graph_ok=ok) for name, ok in graph_ok.items()}
    timings = time_rows(rows, CUDA, TimingSettings(**{**SETTINGS.__dict__, "l2_flush": False}))
    captured = [name for kind, name in cuda.events if kind == "capture"]
    assert captured == ["graphed", "uncapturable", "also_graphed"], "only graph_ok rows are captured, once each"
    assert cuda.events[:3] == [("capture", n) for n in captured], f"a warm-up came first: {cuda.events[:5]}"
    assert {n: t.timer for n, t in timings.items()} == {
        "graphed": "cuda_graph",
        "train": "cuda_event",
        "uncapturable": "cuda_event",
        "also_graphed": "cuda_graph",
    }
    assert timings["train"].note.startswith("timed eagerly: not CUDA-graph capturable")
    assert timings["uncapturable"].note == (
        "cuda_graph unavailable, timed eagerly: RuntimeError: operation not permitted when stream is capturing"
    )
    assert all(t.error is None and len(t.samples_ms) >= 2 for t in timings.values())
    assert [n for n, t in timings.items() if t.replay is not None] == ["graphed", "also_graphed"]  # energy runs it


def test_no_capture_without_cuda_graph(cuda):
    settings = TimingSettings(**{**SETTINGS.__dict__, "cuda_graph": False, "cache": "warm"})
    timing_ = time_rows({"eager": cuda.row("eager")}, CUDA, settings)["eager"]
    assert ("capture", "eager") not in cuda.events and timing_.timer == "cuda_event" and timing_.note is None


def test_cuda_budget_counts_the_whole_block_not_only_the_timed_calls(cuda):
    # Each call is instant but its reset (outside the samples) takes 5 ms: a 30 ms budget allows a few samples,
    # not max_reps of them, as on CPU (tests/suites/test_measure.py).
    settings = TimingSettings(budget_ms=30, min_time_ms=1000, warmup_ms=0, min_reps=2, max_reps=100, cache="warm")
    row = cuda.row("quick", resets=[lambda: time.sleep(0.005)])
    timing_ = time_rows({"quick": row}, CUDA, settings)["quick"]
    assert 2 <= len(timing_.samples_ms) < 15, "the budget ended it, not max_reps"


def test_the_canary_re_enters_before_its_timed_call_so_a_streaming_neighbour_cannot_slow_it():
    """Each round, the canary's timed call follows its own untimed one (as when its start-of-run figure was
    taken), not the last call of a neighbour that may have streamed its data out of cache."""
    order: list[str] = []
    rows = {
        "row": RowCalls([lambda: order.append("row")]),
        "canary": RowCalls([lambda: order.append("canary")], watch=True),
    }
    settings = TimingSettings(budget_ms=5, min_time_ms=1, warmup_ms=0, min_reps=6, max_reps=6, cache="warm")
    time_rows(rows, torch.device("cpu"), settings)
    rounds = "".join("c" if name == "canary" else "r" for name in order).split("r")
    timed_runs = [len(run) for run in rounds if run][1:]  # after the warm-up calls
    assert timed_runs and all(n == 2 for n in timed_runs), order


def test_every_timed_call_follows_its_own_rows_call_even_a_long_cold_one():
    """A cold row's rotation puts its weights out of cache, but what a neighbour's call left (the row's scratch
    memory, TLB and thread-pool state) still slows the call after it: transformers' eager experts' 20 ms cold
    train call ran 1.10-1.30x slower after its neighbours than after its own call (1.02 with the re-entry call).
    So every block re-enters, however long the call."""
    order: list[str] = []

    def row(name: str) -> RowCalls:
        def call(copy: int) -> None:
            order.append(name)
            time.sleep(0.006)

        return RowCalls([lambda: call(0), lambda: call(1)], pool=name)

    settings = TimingSettings(budget_ms=1000, min_time_ms=1, warmup_ms=0, min_reps=3, max_reps=3, block_ms=1e-6)
    assert settings.cache == "cold"
    timings = time_rows({"a": row("a"), "b": row("b")}, torch.device("cpu"), settings)
    assert all(len(t.samples_ms) == 3 for t in timings.values())
    after_warm_up = order[4:]  # each row's two warm-up calls
    # per round and row, a block: the untimed re-entry call, then the one timed call (block_ms makes it one)
    assert [after_warm_up.count(name) for name in "ab"] == [2 * 3, 2 * 3], order
    blocks = [after_warm_up[i : i + 2] for i in range(0, len(after_warm_up), 2)]
    assert all(block[0] == block[1] for block in blocks), order


class _FakeStreams:
    """What capture_graph touches of torch.cuda, as CPU can reach it: a current stream that `stream(s)` swaps and
    restores, and `graph(g)`, whose exit calls capture_end before it restores the stream, as torch 2.13's does.
    The capture fails at capture_end when the body raised (torch invalidates a capture that read the host)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.current = "caller"
        fake = self

        class Stream:
            def wait_stream(self, other) -> None: ...

        class Swap:
            def __init__(self, stream) -> None:
                self.stream = stream

            def __enter__(self):
                self.saved, fake.current = fake.current, self.stream

            def __exit__(self, *exc) -> None:
                fake.current = self.saved

        class Graph:
            def __init__(self, graph) -> None:
                self.swap = Swap("capture")

            def __enter__(self):
                self.swap.__enter__()

            def __exit__(self, kind, value, tb) -> None:
                if kind is not None:
                    raise RuntimeError("CUDA error: operation failed due to a previous error during capture")
                self.swap.__exit__(kind, value, tb)

        monkeypatch.setattr(torch.cuda, "current_stream", Stream)
        monkeypatch.setattr(torch.cuda, "Stream", Stream)
        monkeypatch.setattr(torch.cuda, "stream", Swap)
        monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: None)
        monkeypatch.setattr(torch.cuda, "graph", Graph)
        monkeypatch.setattr(torch.cuda, "set_stream", lambda s: setattr(fake, "current", "caller"))


def test_a_failed_capture_restores_the_callers_stream_and_raises_what_broke_it(monkeypatch):
    streams = _FakeStreams(monkeypatch)

    def reads_the_host() -> None:
        if streams.current == "capture":
            raise RuntimeError("operation not permitted when stream is capturing")

    with pytest.raises(RuntimeError, match="^operation not permitted when stream is capturing$"):
        cuda_timing.capture_graph(reads_the_host)
    assert streams.current == "caller"
