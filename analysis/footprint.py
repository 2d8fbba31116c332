"""Predicted peak memory of one call of each built-in layer, from its shape alone: what `--plan` shows and what
the runner's fit check uses before it allocates anything.

Each model lists the tensors alive at the call's few candidate peaks (after the router, inside the expert
matmuls, at the combine; in train mode also the saved activations, the weight gradients and the backward's
temporaries) and takes the largest sum. The tensors are the ones the layer files create, so a model is read
beside its layer; tests/suites/test_plan.py holds each to the CPU profiler's measured peak.
Legend: T tokens, D d_model, F d_ff, H first-projection width (2F SwiGLU, F GELU), E experts, k top-k,
N = T k assignments, L the largest expert load, b the activation dtype's bytes; the router and the combine
work in fp32 (4 bytes); indices are int64 (8 bytes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

FP32, INDEX = 4, 8


@dataclass(frozen=True)
class Call:
    """What a call's footprint depends on: the layer's shape, the token count, the routing's largest expert load."""

    d_model: int
    d_ff: int
    num_experts: int
    top_k: int
    activation: str
    tokens: int
    elem_bytes: int
    train: bool
    max_load: int  # largest number of assignments one expert gets (N / E when balanced)

    @property
    def assignments(self) -> int:
        return self.tokens * self.top_k

    def width(self, d_ff: int | None = None) -> int:
        """H: the first projection's output width."""
        f = self.d_ff if d_ff is None else d_ff
        return 2 * f if self.activation == "swiglu" else f


def _activation_peak(rows: int, call: Call, d_ff: int | None = None) -> tuple[int, int]:
    """(bytes of the activated [rows, F], transient bytes while it is made): SwiGLU's silu(gate) lives until the
    product with `up` exists."""
    f = call.d_ff if d_ff is None else d_ff
    act = rows * f * call.elem_bytes
    return act, act if call.activation == "swiglu" else 0


def router_bytes(call: Call) -> int:
    """Logits [T, E] in fp32 (plus the matmul's own output when it is not fp32), the top-k logits, their softmax
    (the weights) and indices; all live until the call returns. A renormalised softmax top-k, the usual router,
    never makes the full [T, E] probabilities; the other routers' [T, E] more is left out of the model."""
    t, e, n = call.tokens, call.num_experts, call.assignments
    logits = t * e * FP32 + (t * e * call.elem_bytes if call.elem_bytes != FP32 else 0)
    return logits + n * (INDEX + 2 * FP32)


def _saved_per_row(call: Call) -> int:
    """Bytes autograd keeps per row of the expert FFN: the hidden state, silu(gate) (SwiGLU), the activated
    product and the output, in the activation dtype."""
    f = call.d_ff
    return (call.width() + f + (f if call.activation == "swiglu" else 0) + call.d_model) * call.elem_bytes


@dataclass(frozen=True)
class Pass:
    """One forward through both matmuls: `rows` rows computed, of which the layer keeps the gathered input and
    the hidden state in locals (`keeps_input`, `keeps_hidden`) until its combine of `combine_rows` is done."""

    rows: int
    combine_rows: int
    keeps_input: bool = True
    keeps_hidden: bool = True
    output_first: bool = False  # the fp32 output [T, D] exists before the pass (loop adds into it per expert)
    gathers: bool = True  # the pass runs on a gathered copy of its input rows (dense_all reads the input itself)


def _forward(p: Pass, call: Call) -> int:
    """Peak of the forward pass: while the activation is made, in the second matmul, or at the fp32 combine."""
    b, d = call.elem_bytes, call.d_model
    x = p.rows * d * b if p.keeps_input else 0
    hidden = p.rows * call.width() * b
    act, making = _activation_peak(p.rows, call)
    out = p.rows * d * b
    output = call.tokens * d * FP32
    combine = p.combine_rows * d * FP32 * (2 if b != FP32 else 1) + (0 if p.output_first else output)
    kept = x + (hidden if p.keeps_hidden else 0) + (output if p.output_first else 0)
    x_alive = (p.rows * d * b if p.gathers else 0) + (output if p.output_first else 0)
    return max(x_alive + hidden + act + making, kept + act + out, kept + out + combine)


def _backward(saved_rows: int, rows: int, call: Call, grads: int, combine_grads: int = 2) -> int:
    """Peak of the backward through the combine and both matmuls of `rows` rows while `saved_rows` rows of saved
    activations are alive (more than `rows` for `loop`, whose experts run one at a time); `grads` is the weight
    gradient held at the end; the combine's backward makes `combine_grads` fp32 [rows, D] (the gathered output
    gradient and its product with the routing weight). Autograd frees each node's saved tensors once it has run."""
    b, d, f = call.elem_bytes, call.d_model, call.d_ff
    saved = saved_rows * _saved_per_row(call) + call.tokens * d * FP32
    grad_out = rows * d * FP32
    down = saved + combine_grads * grad_out + rows * f * b + grads // 3  # grad of the product, and of down_proj
    swiglu = call.activation == "swiglu"
    act = saved + (2 if swiglu else 1) * rows * f * b - rows * d * b + grads // 3
    up = saved - rows * _saved_per_row(call) + rows * (call.width() + d) * b + grads
    return max(down, act, up)


def sort_group(call: Call) -> int:
    n = call.assignments
    extra = router_bytes(call) + 2 * n * INDEX  # sort order and the sorted token indices
    forward = extra + _forward(Pass(n, n), call)
    return max(forward, extra + _backward(n, n, call, weight_grads(call))) if call.train else forward


def loop(call: Call) -> int:
    """Each expert's slice is computed in turn and kept; the slices are concatenated for the shared combine. In
    train every expert's activations are saved, and unbind's backward holds the touched experts' first-projection
    gradient slices beside the stacked gradient."""
    n, load, b, d = call.assignments, call.max_load, call.elem_bytes, call.d_model
    extra = router_bytes(call) + 2 * n * INDEX + n * FP32  # sort order, sorted token indices and weights
    outs = n * d * b
    last_expert = outs + _forward(Pass(load, 0, keeps_input=False, keeps_hidden=False), call)
    combine = outs + n * d * FP32 * (2 if b != FP32 else 1) + call.tokens * d * FP32
    forward = extra + max(last_expert, 2 * outs, combine)
    if not call.train:
        return forward
    touched = min(call.num_experts, n) / call.num_experts
    at_end = extra + weight_grads(call) + int(touched * first_projection_bytes(call))
    combine_backward = extra + n * _saved_per_row(call) + 2 * n * d * FP32 + call.tokens * d * FP32
    first_expert = extra + _backward(n, load, call, weight_grads(call) // call.num_experts)  # its grads alone
    return max(forward, combine_backward, first_expert, at_end)


def padded(call: Call) -> int:
    """Every expert's buffer is padded to the largest load: E L rows through both matmuls."""
    rows, n = call.num_experts * call.max_load, call.assignments
    extra = router_bytes(call) + 3 * n * INDEX + n * call.d_model * call.elem_bytes  # slots, order, gathered x
    forward = extra + _forward(Pass(rows, n), call)
    return max(forward, extra + _backward(rows, rows, call, weight_grads(call))) if call.train else forward


def dense_all(call: Call) -> int:
    """Every expert on every token: [E, T, H] hidden states, then an fp32 einsum against the gates."""
    rows = call.num_experts * call.tokens
    extra = router_bytes(call) + call.tokens * call.num_experts * FP32  # the dense gate matrix
    forward = extra + _forward(Pass(rows, 0, keeps_input=False, gathers=False), call)
    backward = extra + _backward(rows, rows, call, weight_grads(call), combine_grads=1)
    return max(forward, backward) if call.train else forward


def dense_ffn(call: Call, d_ff: int) -> int:
    """A dense FFN of width `d_ff` on T tokens (the param- and FLOP-matched baselines): the expert pass of one
    expert as wide as the baseline, without router or combine."""
    wide = Call(call.d_model, d_ff, 1, 1, call.activation, call.tokens, call.elem_bytes, call.train, call.tokens)
    t, b, d = wide.tokens, wide.elem_bytes, wide.d_model
    hidden = t * wide.width() * b
    act, making = _activation_peak(t, wide)
    forward = max(hidden + act + making, act + t * d * b)  # the hidden state is a temporary of the first matmul
    if not call.train:
        return forward
    saved = t * (_saved_per_row(wide) - d * b)
    grads = weight_grads(wide)
    grad_act = (2 if call.activation == "swiglu" else 1) * t * d_ff * b
    return max(forward, saved + grad_act + grads // 3, t * (wide.width() + d) * b + grads)


def first_projection_bytes(call: Call) -> int:
    """The experts' gate_up_proj (or up_proj) weights."""
    return call.num_experts * call.width() * call.d_model * call.elem_bytes


def weight_grads(call: Call) -> int:
    """The experts' weight gradients: the size of the expert weights."""
    return call.num_experts * (call.width() + call.d_ff) * call.d_model * call.elem_bytes


MODELS = {"loop": loop, "padded": padded, "sort_group": sort_group, "dense_all": dense_all}
DENSE_WIDTH = {"param_matched": lambda c: c.num_experts * c.d_ff, "flop_matched": lambda c: c.top_k * c.d_ff}


def predicted_bytes(impl: str, call: Call) -> int | None:
    """Bytes one call allocates beyond its weights and input; None for an implementation with no model here."""
    if impl in MODELS:
        return MODELS[impl](call)
    if impl in DENSE_WIDTH:
        return dense_ffn(call, DENSE_WIDTH[impl](call))
    return None


def expected_max_load(tokens: int, num_experts: int, top_k: int) -> int:
    """The largest expert load a learned router gives on random inputs: the mean plus the balls-into-bins
    excess sqrt(2 mean ln E), at most every token. A synthetic routing states its loads exactly instead."""
    mean = tokens * top_k / num_experts
    return min(tokens, math.ceil(mean + math.sqrt(2 * mean * math.log(max(num_experts, 2)))))


def launches(impl: str, num_experts: int) -> int:
    """Kernels (GPU) or eager ops (CPU) one forward call runs, about: loop runs about six per expert."""
    return {"loop": 6 * num_experts + 20}.get(impl, 4 if impl in DENSE_WIDTH else 25)
