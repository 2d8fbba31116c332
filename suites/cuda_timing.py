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
    its replay runs on the current stream."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay
