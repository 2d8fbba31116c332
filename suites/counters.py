"""Deterministic counters of one call: matmul FLOPs, ATen ops, grouped GEMMs, host syncs and bytes allocated.

Timings are noisy and depend on the machine; these counts depend only on the code and the input, so a CI job
without a GPU can gate on them exactly (reports/counters_gate.py). `count(call)` runs the call once, outside
every timed call, under three of torch's own interposition points:

    FlopCounterMode (torch.utils.flop_counter)   counted_flops: matmuls only (mm, addmm, bmm, baddbmm, conv,
                                                 attention, plus aten._grouped_mm registered here), 2 per
                                                 multiply-add; elementwise work, softmax and scatters are 0
    a TorchDispatchMode (innermost)              aten_ops, launch_ops, grouped_mm_calls, the ATen-side host_syncs,
                                                 alloc_bytes
    a TorchFunctionMode                          the Python-side host_syncs: item(), tolist(), bool(), ...

Host synchronisations are counted where the program asks the host to read a device value, not where a driver
happens to block, so the count is the same on CPU and CUDA for the same code path (see HOST_READ_METHODS and
HOST_SYNC_OPS). The only device-dependent term is a copy between host and device (aten._to_copy, copy_): on a
CPU build `.to(x.device)` moves nothing. On CUDA, `torch.cuda.set_sync_debug_mode("warn")` warns once per
synchronising call; tests/suites/test_counters.py (marked gpu) checks that the count equals those warnings for
every built-in implementation, forward and train.

grouped_mm_calls says which path a layer took: where torch's grouped_mm kernel refuses the dtype or alignment,
sort_group falls back to a per-segment loop with the same result, silently, and counts 0. Taken, it counts 2 in
forward and 6 in a train step (the backward of each grouped_mm is two more: the input's and the weight's gradient).

Why a function mode as well as a dispatch mode: `Tensor.tolist()` and `Tensor.numpy()` on a CPU tensor read
memory directly and dispatch no ATen op at all, so only the Python-level call shows them. On CUDA the same calls
dispatch a copy or `_local_scalar_dense`, which the dispatch mode then leaves uncounted (one read, one sync).

The call is counted as given: call it once before (the runner's correctness check does) so that lazy
initialisation and caches are not counted, and pass `setup` when a call must start from a clean state (a train
step with its gradients cleared, as suites/calls.py `call_for_timing` returns). torch.compile'd code is counted as
the eager code it was compiled from: dynamo does not trace under a dispatch mode, so the call runs eagerly
(`torch.compiler.set_stance("force_eager")`, which also keeps the compiled code in use for later calls).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from moe_impls.sort_group import grouped_mm_reads_offsets

aten = torch.ops.aten

# Ops that only make a tensor's metadata or reserve its memory: on a GPU they launch nothing. Views (t, view,
# transpose, split, ...) are recognised by their schema (OpOverload.is_view); every other op is at least one kernel
# launch or copy, so launch_ops is what a decode step pays in launches before any CUDA graph.
NO_DEVICE_WORK = frozenset({aten.empty, aten.empty_like, aten.empty_strided, aten.new_empty, aten.new_empty_strided})

# Tensor methods that hand a tensor's values to Python: the host must wait for every queued kernel that writes
# the tensor. Counted at the Python call, on every device.
HOST_READ_METHODS: dict[str, str] = {
    "item": "one value into a Python number",
    "tolist": "every value into Python lists (a CPU tensor's memory is read without dispatching any op)",
    "numpy": "an array over the tensor's memory (CPU only; a CUDA tensor must be copied first)",
    "__bool__": "`if t:` / `while t:`: the branch depends on a device value",
    "__int__": "int(t)",
    "__float__": "float(t)",
    "__complex__": "complex(t)",
    "__index__": "t used as a Python index or size (range(t), lst[t])",
}


def _always(args: tuple, kwargs: dict) -> bool:
    return True


def _mask_index(args: tuple, kwargs: dict) -> bool:
    """index(self, indices) and index_put(self, indices, values, ...) with a bool or uint8 index."""
    indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())


def _repeats_without_size(args: tuple, kwargs: dict) -> bool:
    """repeat_interleave.Tensor(repeats) or .self_Tensor(self, repeats); output_size is keyword-only."""
    repeats = args[1] if len(args) > 1 else args[0] if args else kwargs.get("repeats")
    return isinstance(repeats, torch.Tensor) and kwargs.get("output_size") is None


def _crosses_device(src: torch.device, dst: torch.device) -> bool:
    return (src.type == "cpu") != (dst.type == "cpu") and "meta" not in (src.type, dst.type)


def _blocking_to_copy(args: tuple, kwargs: dict) -> bool:
    """_to_copy(self, *, dtype, layout, device, pin_memory, non_blocking, memory_format)."""
    dst = kwargs.get("device")
    return not kwargs.get("non_blocking") and dst is not None and _crosses_device(args[0].device, torch.device(dst))


def _blocking_copy(args: tuple, kwargs: dict) -> bool:
    """copy_(self, src, non_blocking=False)."""
    non_blocking = args[2] if len(args) > 2 else kwargs.get("non_blocking", False)
    return not non_blocking and _crosses_device(args[1].device, args[0].device)


def _grouped_mm_reads_offsets(args: tuple, kwargs: dict) -> bool:
    """_grouped_mm(mat_a, mat_b, offs, ...) where torch's fused kernel does not serve the GPU: the fallback copies
    offs to the host inside the op, below this dispatch mode (moe_impls/sort_group.py grouped_mm_reads_offsets)."""
    offs = args[2] if len(args) > 2 else kwargs.get("offs")
    return offs is not None and grouped_mm_reads_offsets(args[0].device)


@dataclass(frozen=True)
class SyncRule:
    why: str
    when: Callable[[tuple, dict], bool] = _always  # (args, kwargs) of the op -> does this call synchronise


# ATen ops that make the host wait for the device: their output's size depends on tensor values (the host must
# read a count back before it can allocate the output), they return a Python value, or they copy across the
# host-device boundary. The last kind is the only one a CPU build cannot see: there `.to(x.device)` moves nothing.
HOST_SYNC_OPS: dict[torch._ops.OpOverloadPacket, SyncRule] = {
    aten._local_scalar_dense: SyncRule("a value read into C++/Python (item, int(), bool() reached from C++ code)"),
    aten.nonzero: SyncRule("output length = number of non-zeros (torch.where(cond), argwhere, nonzero)"),
    aten.masked_select: SyncRule("output length = number of True mask elements"),
    aten._unique: SyncRule("output length = number of distinct values"),
    aten._unique2: SyncRule("output length = number of distinct values (torch.unique)"),
    aten.unique_dim: SyncRule("output length = number of distinct slices"),
    aten.unique_consecutive: SyncRule("output length = number of runs"),
    aten.unique_dim_consecutive: SyncRule("output length = number of runs of slices"),
    aten.bincount: SyncRule("output length = max(input) + 1, read from the device (minlength only raises it)"),
    aten.equal: SyncRule("returns a Python bool"),
    aten.allclose: SyncRule("returns a Python bool"),
    aten.is_nonzero: SyncRule("returns a Python bool"),
    aten.index: SyncRule("x[mask]: a bool index becomes nonzero(mask), output length = True elements", _mask_index),
    aten.index_put: SyncRule("x[mask] = v: a bool index becomes nonzero(mask)", _mask_index),
    aten.index_put_: SyncRule("x[mask] = v: a bool index becomes nonzero(mask)", _mask_index),
    aten._index_put_impl_: SyncRule("x[mask] = v: a bool index becomes nonzero(mask)", _mask_index),
    aten.repeat_interleave: SyncRule(
        "tensor repeats without output_size: output length = repeats.sum(), read back", _repeats_without_size
    ),
    aten._grouped_mm: SyncRule("grouped_mm off compute capability 9.x/10.x: offs read back", _grouped_mm_reads_offsets),
    aten._to_copy: SyncRule("t.to(device) / t.cpu() / t.cuda() across the boundary, blocking", _blocking_to_copy),
    aten.copy_: SyncRule("dst.copy_(src) across the host-device boundary, blocking", _blocking_copy),
}


@dataclass(frozen=True)
class Counters:
    """Counts of one call; exact integers, equal on every run of the same code over the same input."""

    counted_flops: int  # FLOP (a multiply-add is 2), matmuls only, as FlopCounterMode counts them
    aten_ops: int  # ATen operator calls dispatched (views and in-place ops included, forward and backward)
    launch_ops: int  # the aten_ops that do device work: neither a view nor a bare allocation (NO_DEVICE_WORK)
    host_syncs: int  # times the host waited for a device value (HOST_READ_METHODS, HOST_SYNC_OPS, copies)
    alloc_bytes: int  # bytes of the new storages the call's ops returned (logical, before allocator rounding)
    grouped_mm_calls: int  # aten._grouped_mm ops run, forward and backward: did the call take torch's grouped GEMM
    syncs_by_op: tuple[tuple[str, int], ...] = ()  # where host_syncs came from, for diagnosis; not a column

    def columns(self) -> dict[str, int]:
        """The result columns (suites/schema.py RESULT_COLUMNS, `# deterministic counters`)."""
        return {
            "counted_flops": self.counted_flops,
            "aten_ops": self.aten_ops,
            "launch_ops": self.launch_ops,
            "host_syncs": self.host_syncs,
            "alloc_bytes": self.alloc_bytes,
            "grouped_mm_calls": self.grouped_mm_calls,
        }


def count(call: Callable[[], object], setup: Callable[[], None] | None = None) -> Counters:
    """Run `call()` once under the counting modes (after `setup()`, which is not counted) and return its counts.

    The call's result is dropped before returning, so its memory is released as the timed calls would release it.
    """
    if setup is not None:
        setup()
    ops = _OpCounter()
    flops = FlopCounterMode(display=False, custom_mapping={aten._grouped_mm: grouped_mm_flop})
    flops.mod_tracker = _GlobalTotalOnly()
    # FlopCounterMode outermost, the op counter innermost: ops are counted as the program dispatched them,
    # before FlopCounterMode decomposes any it has no formula for. torch.compile does not trace under a dispatch
    # mode, and a compiled frame entered under one is marked to run eagerly from then on (torch 2.13); forcing
    # eager execution for the counted call keeps compiled code compiled for every later call.
    with torch.compiler.set_stance("force_eager"), flops, _HostReadCounter(ops), ops:
        call()
    return Counters(
        counted_flops=int(flops.get_total_flops()),
        aten_ops=ops.ops,
        launch_ops=ops.launches,
        host_syncs=sum(ops.syncs.values()),
        alloc_bytes=ops.alloc_bytes,
        grouped_mm_calls=ops.grouped_mm,
        syncs_by_op=tuple(sorted(ops.syncs.items())),
    )


def grouped_mm_flop(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of aten._grouped_mm (F.grouped_mm), which FlopCounterMode has no formula for (torch 2.13).

    2D x 3D ([N, K] x [E, K, O], rows grouped by offs) and 3D x 3D: every output element is a K-long dot product.
    2D x 2D ([M, N] x [N, O] -> [E, M, O], the weight gradient): each of the N rows joins one group's sum.
    """
    if len(a_shape) == 2 and len(b_shape) == 2:
        return 2 * a_shape[0] * a_shape[1] * b_shape[1]
    return 2 * a_shape[-1] * math.prod(out_shape)


class _GlobalTotalOnly:
    """Stands in for FlopCounterMode's ModuleTracker, as only the global total is wanted, not a split per module.

    The tracker's global module hooks dispatch ops of their own (register_multi_grad_hook takes `view_as` of every
    leaf input that requires grad), which the op counter would count as the call's, and slow every module call.
    """

    parents = frozenset({"Global"})

    def __enter__(self) -> _GlobalTotalOnly:
        return self

    def __exit__(self, *exc) -> None:
        return None


class _OpCounter(TorchDispatchMode):
    """Counts every ATen op, those that do device work, the grouped GEMMs among them, the ones that synchronise,
    and the bytes of the new storages they return."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0
        self.launches = 0
        self.grouped_mm = 0
        self.alloc_bytes = 0
        self.syncs: Counter[str] = Counter()
        self.reading = 0  # > 0 inside a HOST_READ_METHODS call, already counted once by _HostReadCounter
        self._allocates: dict[torch._ops.OpOverload, bool] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ops += 1
        self.launches += not (func.is_view or func._overloadpacket in NO_DEVICE_WORK)
        self.grouped_mm += func._overloadpacket is aten._grouped_mm
        rule = HOST_SYNC_OPS.get(func._overloadpacket)
        if rule is not None and not self.reading and rule.when(args, kwargs):
            self.syncs[str(func._overloadpacket)] += 1
        out = func(*args, **kwargs)
        allocates = self._allocates.get(func)
        if allocates is None:  # views and in-place or out= ops return an alias of an input: nothing new
            allocates = self._allocates[func] = all(r.alias_info is None for r in func._schema.returns)
        if allocates:
            self.alloc_bytes += _new_storage_bytes(out, args, kwargs)
        return out


class _HostReadCounter(TorchFunctionMode):
    """Counts the Python-level reads of tensor values (HOST_READ_METHODS), one per call on any device."""

    METHODS = frozenset(getattr(torch.Tensor, name) for name in HOST_READ_METHODS)

    def __init__(self, ops: _OpCounter) -> None:
        super().__init__()
        self.op_counter = ops

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in self.METHODS:
            return func(*args, **kwargs)
        self.op_counter.syncs[f"Tensor.{func.__name__}"] += 1
        self.op_counter.reading += 1
        try:
            return func(*args, **kwargs)
        finally:
            self.op_counter.reading -= 1


def _new_storage_bytes(out, args, kwargs) -> int:
    """Bytes of the storages in `out` that none of the inputs owns (`_unsafe_view` and the like alias silently)."""
    outs = _tensors(out)
    if not outs:
        return 0
    inputs = {_storage_ptr(t) for t in _tensors(args) + _tensors(list(kwargs.values()))}
    total = 0
    for t in outs:
        ptr = _storage_ptr(t)
        if ptr is not None and ptr not in inputs:
            inputs.add(ptr)  # two outputs over one storage count once
            total += t.untyped_storage().nbytes()
    return total


def _tensors(values) -> list[torch.Tensor]:
    """The tensors of an op's output or arguments: a tensor, or a sequence of tensors and lists of them."""
    if isinstance(values, torch.Tensor):
        return [values]
    found = []
    for v in values if isinstance(values, (tuple, list)) else ():
        if isinstance(v, torch.Tensor):
            found.append(v)
        elif isinstance(v, (tuple, list)):
            found += [t for t in v if isinstance(t, torch.Tensor)]
    return found


def _storage_ptr(t: torch.Tensor) -> int | None:
    """The storage's address, or None for a tensor without one (0 bytes, or a subclass without real storage)."""
    try:
        storage = t.untyped_storage()
    except (RuntimeError, NotImplementedError):
        return None
    return storage.data_ptr() if storage.nbytes() else None
