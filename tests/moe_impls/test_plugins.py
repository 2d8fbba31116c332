"""Plug-ins: found by entry point (a real dist-info on sys.path) and by `module.path:factory`, loaded lazily."""

import pytest
import torch

import moe_impls
from moe_impls import MoEConfig, MoEWeights, plugins

PLUGIN = "tests.plugin_example:make_layer"


def install_entry_points(root, entries: dict[str, str]) -> None:
    """What `pip install` of a package declaring [project.entry-points."moe_bench.impls"] leaves behind."""
    dist = root / "moe_bench_test_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: moe-bench-test-plugin\nVersion: 0.1\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entries.items())
    (dist / "entry_points.txt").write_text(f"[{plugins.GROUP}]\n{lines}")


@pytest.fixture
def installed(tmp_path, monkeypatch):
    install_entry_points(tmp_path, {"example_dense": PLUGIN, "example_missing": "tests.plugin_example.import_error:x"})
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def check_against_reference(module_factory) -> None:
    cfg = MoEConfig(d_model=16, d_ff=32, num_experts=4, top_k=2)
    weights = MoEWeights(cfg)
    x = torch.randn(3, 7, 16)
    y = module_factory(weights)(x)
    y_ref, _ = moe_impls.get("dense_all")(weights)(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)


def test_plugin_by_import_path_runs_on_the_shared_weights():
    impl = moe_impls.resolve(PLUGIN)
    assert impl.kind == "plugin" and impl.unsupported(MoEConfig(d_model=4, d_ff=4, num_experts=2)) is None
    check_against_reference(impl)


def test_plugin_by_entry_point_is_found_without_importing_it(installed):
    assert {"example_dense", "example_missing"} <= set(plugins.entry_point_names())
    assert moe_impls.registry.is_known("example_missing")  # known by name; its import fails only when built
    check_against_reference(moe_impls.resolve("example_dense"))


def test_broken_plugins_fail_when_built_with_a_one_line_reason(installed):
    weights = MoEWeights(MoEConfig(d_model=8, d_ff=8, num_experts=2, top_k=1))
    with pytest.raises(ModuleNotFoundError, match="moe_bench_no_such_dependency"):
        moe_impls.resolve("example_missing")(weights)
    with pytest.raises(ModuleNotFoundError):
        moe_impls.resolve("tests.plugin_example.nowhere:make_layer")(weights)
    with pytest.raises(AttributeError):
        moe_impls.resolve("tests.plugin_example:no_such_factory")(weights)
    with pytest.raises(TypeError, match="expected nn.Module"):
        moe_impls.resolve("tests.plugin_example:not_a_module")(weights)
    with pytest.raises(TypeError, match="expected a factory"):
        moe_impls.resolve("tests.plugin_example:__doc__")(weights)


def test_names_that_are_neither_form_are_unknown():
    assert not moe_impls.registry.is_known("no_such_plugin")
    assert not moe_impls.registry.is_known("not a path:x")
    with pytest.raises(KeyError, match="module.path:factory"):
        moe_impls.resolve("no_such_plugin")
