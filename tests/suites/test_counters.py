"""suites/counters.py: each counter against a known quantity, every host-sync rule, the composition of the modes,
determinism, and counted FLOPs against the analytic formula of analysis/flops.py for every built-in layer.

The FLOP cross-check is exact (tolerance 0): FlopCounterMode counts every matmul 2 per multiply-add, as the
analytic formula does, so the two differ only by named terms. The analytic `flops` column counts the assignments
routed; FlopCounterMode counts the rows each implementation really multiplied (`computed_rows`: padded's capacity
padding, dense_all's E rows per token); the shared combine is a scatter-add, which counts no FLOPs.
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import moe_impls
from analysis import flops
from moe_impls import MoEConfig, MoEWeights
from suites.calls import call_for_timing
from suites.counters import HOST_SYNC_OPS, Counters, count

IMPLS = ("loop", "padded", "sort_group", "dense_all")
MODES = ("forward", "train")
EXTRA_SYNC = "tests.plugin_example.extra_sync:make_layer"
SHAPES = {
    "swiglu-8x2": MoEConfig(d_model=64, d_ff=128, num_experts=8, top_k=2),
    "gelu-4x1": MoEConfig(d_model=48, d_ff=96, num_experts=4, top_k=1, activation="gelu"),
    "swiglu-16x4": MoEConfig(d_model=32, d_ff=64, num_experts=16, top_k=4),
    # rows of 30 and 42 float32 are not 16-byte aligned: sort_group's per-segment fallback instead of grouped_mm
    "unaligned-4x2": MoEConfig(d_model=30, d_ff=42, num_experts=4, top_k=2, activation="gelu"),
}


def build(name: str, cfg: MoEConfig, device="cpu", dtype=torch.float32):
    if name in moe_impls.BASELINES:
        return moe_impls.BASELINES[name](cfg, device=device, dtype=dtype, seed=0)
    return moe_impls.resolve(name)(MoEWeights(cfg, device=device, dtype=dtype, seed=0))


def inputs(cfg: MoEConfig, tokens: int, device="cpu", dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """x [T, D] and the train step's output gradient, seeded."""
    gen = torch.Generator().manual_seed(0)
    x, grad_out = torch.randn(2, tokens, cfg.d_model, generator=gen).to(device, dtype)
    return x, grad_out


def warm_call(layer, x: torch.Tensor, grad_out: torch.Tensor, mode: str):
    """The runner's timed call and its setup, called once so that first-call effects are not counted."""
    call, setup = call_for_timing(layer, x, grad_out, mode)
    setup()
    call()
    return call, setup


# ---- host synchronisations, rule by rule (CPU: the count must not need a GPU) ----------------------------------
_x = torch.tensor([0, 2, 1, 0, 3])
_mask = _x > 0
SYNC_CASES = {
    "item": (lambda: _x[1].item(), 1),
    "tolist (no ATen op on CPU)": (lambda: _x.tolist(), 1),
    "numpy": (lambda: _x.numpy(), 1),
    "bool": (lambda: bool(_x.any()), 1),
    "int": (lambda: int(_x.max()), 1),
    "float": (lambda: float(_x.sum()), 1),
    "index": (lambda: [0, 1, 2][_x[1]], 1),
    "torch.where(cond)": (lambda: torch.where(_mask), 1),
    "nonzero": (lambda: _x.nonzero(), 1),
    "argwhere": (lambda: torch.argwhere(_x), 1),
    "x[mask]": (lambda: _x[_mask], 1),
    "x[mask] = v": (lambda: _x.clone().__setitem__(_mask, 7), 1),
    "masked_select": (lambda: _x.masked_select(_mask), 1),
    "unique": (lambda: torch.unique(_x), 1),
    "unique_consecutive": (lambda: torch.unique_consecutive(_x), 1),
    "bincount": (lambda: torch.bincount(_x, minlength=8), 1),
    "repeat_interleave(repeats)": (lambda: torch.repeat_interleave(torch.arange(5), _x), 1),
    "torch.equal": (lambda: torch.equal(_x, _x), 1),
    "two reads": (lambda: (_x[0].item(), _x.tolist()), 2),
    "repeat_interleave(repeats, output_size)": (lambda: torch.repeat_interleave(torch.arange(5), _x, output_size=6), 0),
    "repeat_interleave(int)": (lambda: torch.repeat_interleave(_x, 2), 0),
    "x[long index]": (lambda: _x[torch.tensor([1, 3])], 0),
    "torch.where(cond, a, b)": (lambda: torch.where(_mask, _x, 0), 0),
    "sort, cumsum, topk, scatter_add": (
        lambda: torch.zeros(4, dtype=torch.long).scatter_add_(0, _x % 4, torch.cumsum(torch.sort(_x).values, 0)),
        0,
    ),
    "split by a list": (lambda: torch.split(torch.arange(6), [2, 4]), 0),
    "to(x.device) on CPU": (lambda: _x.to(_x.device), 0),
}


@pytest.mark.parametrize("case", SYNC_CASES, ids=list(SYNC_CASES))
def test_each_host_sync_rule(case):
    call, expected = SYNC_CASES[case]
    counted = count(call)
    assert counted.host_syncs == expected, counted.syncs_by_op


def test_a_value_read_counts_once_not_again_as_its_aten_op():
    counted = count(lambda: _x[1].item())
    assert counted.syncs_by_op == (("Tensor.item", 1),)
    assert count(lambda: torch.allclose(_x.float(), _x.float())).syncs_by_op == (("aten.allclose", 1),)


def test_every_sync_rule_says_why():
    assert all(rule.why for rule in HOST_SYNC_OPS.values())


# ---- the other counters against known quantities ---------------------------------------------------------------
def test_flops_of_known_matmuls():
    a, b = torch.randn(6, 4), torch.randn(4, 5)
    assert count(lambda: a @ b).counted_flops == 2 * 6 * 4 * 5
    assert count(lambda: torch.randn(3, 6, 4) @ torch.randn(3, 4, 5)).counted_flops == 3 * 2 * 6 * 4 * 5
    assert count(lambda: F.silu(a).exp().sum()).counted_flops == 0  # elementwise and reductions are not counted
    w = torch.randn(5, 4, requires_grad=True)
    x = torch.randn(6, 4, requires_grad=True)
    assert count(lambda: F.linear(x, w).sum().backward()).counted_flops == 3 * 2 * 6 * 4 * 5  # + 2 grad matmuls


@pytest.mark.skipif(not hasattr(F, "grouped_mm"), reason="torch without F.grouped_mm")
def test_grouped_mm_flops_equal_the_matmuls_of_its_segments():
    """FlopCounterMode has no formula for aten._grouped_mm; ours must count what one mm per segment counts."""
    x = torch.randn(10, 16, requires_grad=True)
    w = torch.randn(3, 8, 16, requires_grad=True)  # [E, O, K]
    offsets = torch.tensor([2, 2, 10], dtype=torch.int32)  # an empty segment in the middle
    grad_out = torch.randn(10, 8)  # a real gradient: the grouped_mm backward rejects sum()'s expanded one
    grouped = count(lambda: F.grouped_mm(x, w.transpose(-2, -1), offs=offsets).backward(grad_out))
    segments = count(lambda: torch.cat([x[:2] @ w[0].t(), x[2:] @ w[2].t()]).backward(grad_out))
    assert grouped.counted_flops == segments.counted_flops == 3 * 2 * 10 * 16 * 8


def test_alloc_bytes_of_known_allocations():
    x = torch.randn(1000)
    assert count(lambda: torch.empty(1000)).alloc_bytes == 4000
    assert count(lambda: x + 1).alloc_bytes == 4000
    assert count(lambda: x.view(10, 100).t()).alloc_bytes == 0  # views
    assert count(lambda: x.add_(1)).alloc_bytes == 0  # in place
    assert count(lambda: torch.add(x, 1, out=torch.empty(1000))).alloc_bytes == 4000  # the out buffer, once
    # matmul of [2, 3, 4] x [4, 5] folds to mm and returns it through _unsafe_view, an alias its schema hides
    assert count(lambda: torch.randn(2, 3, 4) @ torch.randn(4, 5)).alloc_bytes == 4 * (24 + 20 + 30)


def test_aten_ops_of_a_known_sequence():
    a, b = torch.randn(3), torch.randn(3)
    assert count(lambda: torch.add(a, b)).aten_ops == 1
    assert count(lambda: (a + b).mul_(2).view(3, 1)).aten_ops == 3


def test_launch_ops_leave_out_views_and_bare_allocations():
    a, b = torch.randn(3), torch.randn(3)
    sequence = count(lambda: (a + b).mul_(2).view(3, 1).t().unsqueeze(0).expand(2, 1, 3))
    assert (sequence.aten_ops, sequence.launch_ops) == (6, 2)  # add and the in-place mul do work; four views
    allocated = count(lambda: (torch.empty(3), torch.zeros(3), a.new_empty(3), torch.empty_like(a)))
    assert (allocated.aten_ops, allocated.launch_ops) == (4, 1)  # only zeros writes memory (a fill kernel)
    assert count(lambda: a.split(1)).launch_ops == 0


def test_module_calls_add_no_ops_of_the_counting_tools():
    linear = torch.nn.Linear(4, 5)
    x = torch.randn(6, 4, requires_grad=True)  # a leaf that requires grad: a module tracker would view_as it
    assert count(lambda: linear(x)).aten_ops == count(lambda: F.linear(x, linear.weight, linear.bias)).aten_ops == 2


def test_compiled_code_is_counted_as_its_eager_code_and_stays_compiled():
    """Entered under a dispatch mode, a compiled frame is marked eager for good; count() must not do that."""
    graph_runs = []

    def backend(gm, example_inputs):
        def run(*args):
            graph_runs.append(1)
            return gm(*args)

        return run

    def f(x):
        return torch.relu(x @ x.t()) * 2

    compiled, x = torch.compile(f, backend=backend), torch.randn(4, 3)
    compiled(x)
    assert count(lambda: compiled(x)) == count(lambda: f(x))
    runs = len(graph_runs)
    compiled(x)
    assert len(graph_runs) == runs + 1


def test_setup_runs_before_and_is_not_counted():
    calls = []
    counted = count(lambda: calls.append("call"), setup=lambda: calls.append(torch.ones(99).sum().item()))
    assert calls == [99.0, "call"] and counted == Counters(0, 0, 0, 0, 0, 0)
    columns = ("counted_flops", "aten_ops", "launch_ops", "host_syncs", "alloc_bytes", "grouped_mm_calls")
    assert counted.columns() == dict.fromkeys(columns, 0)


@pytest.mark.skipif(not hasattr(F, "grouped_mm"), reason="torch without F.grouped_mm")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grouped_mm_calls_are_sort_groups_two_and_their_backward(dtype):
    """Aligned rows: sort_group's two grouped GEMMs in forward; a train step adds each one's backward (the input's
    and the weight's gradient, one grouped_mm each). Unaligned rows take the fallback loop, which counts none."""
    cfg = SHAPES["swiglu-8x2"]  # rows of 64 and 128 elements: 16-byte aligned in both dtypes
    found = {}
    for name in IMPLS:
        for mode in MODES:
            layer = build(name, cfg, dtype=dtype)
            found[name, mode] = count(*warm_call(layer, *inputs(cfg, 32, dtype=dtype), mode)).grouped_mm_calls
    assert found.pop(("sort_group", "forward")) == 2
    assert found.pop(("sort_group", "train")) == 2 + 2 * 2
    assert set(found.values()) == {0}, found
    unaligned = SHAPES["unaligned-4x2"]
    for mode in MODES:
        fallback = warm_call(build("sort_group", unaligned), *inputs(unaligned, 32), mode)
        assert count(*fallback).grouped_mm_calls == 0


# ---- composition of the modes -----------------------------------------------------------------------------------
class _Ops(TorchDispatchMode):
    """Counts ops, as a caller's own dispatch mode would."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", IMPLS)
def test_counting_composes_with_flop_counter_and_dispatch_modes(name, mode):
    """FlopCounterMode is a TorchDispatchMode underneath; count() nests its own with an op counter, and may itself
    run inside a caller's modes. Each must see what it would see alone."""
    call, setup = warm_call(build(name, SHAPES["swiglu-8x2"]), *inputs(SHAPES["swiglu-8x2"], 16), mode)
    alone = count(call, setup)
    setup()
    with _Ops() as plain:  # no FlopCounterMode at all
        call()
    assert plain.ops == alone.aten_ops  # ops as the program dispatches them, before FlopCounterMode decomposes any
    setup()
    with FlopCounterMode(display=False, custom_mapping=_grouped_mm_mapping()) as flops_alone:
        call()
    assert flops_alone.get_total_flops() == alone.counted_flops
    with FlopCounterMode(display=False) as outer:
        nested = count(call, setup)
    # The caller's FlopCounterMode hooks every module: its register_multi_grad_hook dispatches one view_as of the
    # train step's leaf input inside the call (count() replaces its own FlopCounterMode's module tracker).
    tracker_ops = 1 if mode == "train" else 0
    assert replace(nested, aten_ops=nested.aten_ops - tracker_ops) == alone
    assert outer.get_total_flops() == alone.counted_flops or name == "sort_group"  # torch has no _grouped_mm formula


def _grouped_mm_mapping():
    from suites.counters import grouped_mm_flop

    return {torch.ops.aten._grouped_mm: grouped_mm_flop}


# ---- determinism --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", [*IMPLS, "flop_matched", EXTRA_SYNC])
def test_counting_the_unchanged_build_20_times_gives_identical_counters(name, mode):
    call, setup = warm_call(build(name, SHAPES["swiglu-8x2"]), *inputs(SHAPES["swiglu-8x2"], 32), mode)
    runs = [count(call, setup) for _ in range(20)]
    assert runs.count(runs[0]) == 20, sorted(set(runs), key=str)


def test_the_planted_read_is_one_more_host_sync_and_nothing_else():
    cfg = SHAPES["swiglu-8x2"]
    for mode in MODES:
        clean = count(*warm_call(build("sort_group", cfg), *inputs(cfg, 32), mode))
        planted = count(*warm_call(build(EXTRA_SYNC, cfg), *inputs(cfg, 32), mode))
        assert planted.host_syncs == clean.host_syncs + 1
        assert dict(planted.syncs_by_op)["Tensor.tolist"] == 1
        assert planted.counted_flops == clean.counted_flops
        assert planted.aten_ops == clean.aten_ops  # tolist reads the values without an ATen op
        assert planted.alloc_bytes == clean.alloc_bytes


# ---- counted FLOPs against the analytic formula --------------------------------------------------------------------
def analytic_matmul_flops(name: str, layer, cfg: MoEConfig, x: torch.Tensor, mode: str) -> tuple[int, int]:
    """(the runner's `flops` column, what FlopCounterMode must count) for one call of `layer` on `x`."""
    tokens = x.shape[0]
    if name in moe_impls.BASELINES:
        dense = flops.dense_flops(cfg.d_model, layer.d_ff, cfg.activation, tokens, mode)
        return dense, dense
    with torch.no_grad():
        _, routing = layer(x)
    routed = flops.moe_flops(cfg, tokens, routing.token_idx_N.numel(), mode)
    computed = flops.moe_flops(cfg, tokens, routing.computed_rows, mode)
    return routed, computed


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", [*IMPLS, *moe_impls.BASELINES])
def test_counted_flops_equal_the_analytic_formula(name, shape, mode):
    cfg = SHAPES[shape]
    layer = build(name, cfg)
    for tokens in (1, 16, 96):
        x, grad_out = inputs(cfg, tokens)
        call, setup = warm_call(layer, x, grad_out, mode)
        routed, computed = analytic_matmul_flops(name, layer, cfg, x, mode)
        counted = count(call, setup).counted_flops
        assert counted == computed, f"{name} {shape} T={tokens} {mode}: counted {counted}, analytic {computed}"
        if name in ("loop", "sort_group", *moe_impls.BASELINES):  # they compute the routed rows only
            assert counted == routed
        else:  # padding rows and idle experts are work the analytic column leaves out
            assert counted > routed


# ---- CUDA: the count against torch's own sync detector --------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_host_syncs_equal_the_warnings_of_cuda_sync_debug_mode(dtype):
    """set_sync_debug_mode("warn") warns once per call that blocks the host on the device; the count must agree.

    bfloat16 takes sort_group's grouped_mm kernel, float32 its per-segment fallback (two tolist() per forward).
    """
    cfg = SHAPES["swiglu-8x2"]
    found = {}
    for name in [*IMPLS, *moe_impls.BASELINES, EXTRA_SYNC]:
        for mode in MODES:
            call, setup = warm_call(build(name, cfg, "cuda", dtype), *inputs(cfg, 64, "cuda", dtype), mode)
            counted = count(call, setup).host_syncs
            setup()
            torch.cuda.synchronize()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    call()
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            torch.cuda.synchronize()
            warned = sum("synchronizing" in str(w.message) for w in caught)
            found[(name, mode)] = (counted, warned)
    wrong = {k: v for k, v in found.items() if v[0] != v[1]}
    assert not wrong, f"(counted, warned) differ: {wrong}"
    assert found[("sort_group", "forward")][0] == (0 if dtype == torch.bfloat16 else 2)
    assert found[(EXTRA_SYNC, "forward")][0] == found[("sort_group", "forward")][0] + 1


def test_a_decode_forward_dispatches_no_op_it_need_not():
    """One token, softmax top-2 of 8: sort_group's forward, router included, dispatches 16 ATen ops, 13 of them
    launches (21 and 15 before the weights' transposed views were kept while autograd is off and the combine became
    one embedding_bag over each token's rows; 39 before the router took the top-k values as its weights and skipped
    reshapes of a [T, D] input and an unneeded clamp; 30 before the routing record derived counts, token ids, the
    full softmax and the drop count only on use and the segment ends came from one binary search of the sorted
    experts). Each op that is not a view is a GPU launch. Up to 16 tokens the count is the same."""
    cfg = MoEConfig(d_model=256, d_ff=512, num_experts=8, top_k=2)
    layer = moe_impls.get("sort_group")(MoEWeights(cfg))
    for tokens in (1, 16):
        x = torch.randn(tokens, 256)
        with torch.no_grad():
            layer(x)
            counted = count(lambda x=x: layer(x))
        assert counted.aten_ops <= 16 and counted.host_syncs == 0, counted
        assert counted.launch_ops <= 13, counted  # the other three are views: two flattening views and a split


@pytest.mark.parametrize(("capability", "reads"), [((8, 0), True), ((8, 9), True), ((9, 0), False), ((10, 0), False)])
def test_grouped_mm_off_hopper_and_blackwell_counts_its_host_read(monkeypatch, capability, reads):
    """torch's fused grouped GEMM serves compute capability 9.x and 10.x; on an A100 or an L4 the op loops over the
    groups with offs copied to the host, inside the op where the dispatch mode cannot see it. The count says so,
    and sort_group is then not captured in a CUDA graph. A GPU's capability is faked: CPU cannot reach one; the
    count is checked against CUDA's own sync warnings on the GPU this runs on (test_host_syncs_equal_the_warnings_of_cuda_sync_debug_mode)."""
    from moe_impls.sort_group import grouped_mm_reads_offsets

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    gpu = torch.device("cuda", 0)
    assert grouped_mm_reads_offsets(gpu) is reads and not grouped_mm_reads_offsets(torch.device("cpu"))

    class OnGpu:  # what the rule reads of mat_a
        device = gpu

    offs = torch.tensor([2, 4], dtype=torch.int32)
    assert HOST_SYNC_OPS[torch.ops.aten._grouped_mm].when((OnGpu(), None, offs), {}) is reads
    assert not HOST_SYNC_OPS[torch.ops.aten._grouped_mm].when((torch.ones(4, 8), None, offs), {})
