"""The CUDA pieces of the timing protocol (suites/timing.py) that a CPU cannot reach: the L2 flush and the
capture of a CUDA graph."""

from __future__ import annotations

from collections.abc import Callable

import torch


class L2Flush:
    """Zeroing a buffer twice the L2 size evicts the previous call's weights, so every call starts cold."""

    def __init__(self, device: torch.device) -> None:
        l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 64 * 2**20)
        self.buffer = torch.empty(2 * l2, dtype=torch.int8, device=device)

    def __call__(self) -> None:
        self.buffer.zero_()


def capture_graph(fn: Callable[[], object]) -> Callable[[], None]:
    """The CUDA work of a capture: three calls on a side stream (as torch.cuda.graphs asks), then the graph;
    its replay runs on the current stream.

    A capture that fails (a host read inside `fn`) raises from `torch.cuda.graph`'s exit, whose `capture_end` comes
    before it restores the caller's stream (torch 2.13): the caller's stream is set back here, or every later call,
    flush and event of the worker would run on the capture's stream. The error raised is the body's own (the read
    that broke the capture), not capture_end's that replaced it."""
    caller = torch.cuda.current_stream()
    stream = torch.cuda.Stream()
    stream.wait_stream(caller)
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    caller.wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            fn()
    except Exception as exc:
        torch.cuda.set_stream(caller)
        raise (exc.__context__ or exc) from None
    return graph.replay
