"""On a GPU: sort_group takes torch's grouped_mm kernel in bf16 and still equals the reference. Skipped on CPU."""

import pytest
import torch

import moe_impls
from moe_impls import MoEConfig, MoEWeights
from moe_impls.sort_group import grouped_mm_supported

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("tokens", [1, 7, 512])
def test_every_impl_matches_reference_on_cuda(dtype, tokens):
    cfg = MoEConfig(d_model=256, d_ff=512, num_experts=8, top_k=2)
    weights = MoEWeights(cfg, device="cuda", dtype=dtype)
    x = torch.randn(tokens, 256, device="cuda", dtype=dtype)
    ref, _ = moe_impls.get("dense_all")(weights)(x)
    tol = dict(rtol=3e-2, atol=3e-2) if dtype == torch.bfloat16 else dict(rtol=1e-4, atol=1e-4)
    for name in moe_impls.names():
        y, _ = moe_impls.get(name)(weights)(x)
        torch.testing.assert_close(y, ref, **tol, msg=lambda m, n=name: f"{n}: {m}")
    if dtype == torch.bfloat16:
        assert grouped_mm_supported(x, weights.experts.w_in_EHD)


@pytest.mark.parametrize("name", ["sort_group", "dense_all"])
def test_capturable_layers_never_sync_and_replay_in_a_cuda_graph(name):
    cfg = MoEConfig(d_model=256, d_ff=512, num_experts=8, top_k=2)
    weights = MoEWeights(cfg, device="cuda", dtype=torch.bfloat16)
    layer = moe_impls.get(name)(weights)
    assert layer.capturable
    x = torch.randn(64, 256, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        expected, _ = layer(x)
        torch.cuda.set_sync_debug_mode("error")  # any host read inside forward raises
        try:
            layer(x)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            layer(x)
        torch.cuda.current_stream().wait_stream(stream)
        with torch.cuda.graph(graph):
            out, _ = layer(x)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, expected)
