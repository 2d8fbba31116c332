"""moe_impls/registry.py: names to implementations, knowing no family of them (each family registers itself)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import moe_impls
from moe_impls import registry
from moe_impls.registry import Impl, Resolver

REGISTRY = Path(moe_impls.__file__).with_name("registry.py")


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at module level or inside a function, TYPE_CHECKING blocks excepted."""
    tree = ast.parse(path.read_text())
    type_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and ast.unparse(block.test) == "TYPE_CHECKING"
        for node in ast.walk(block)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            found |= {f"{node.module}.{alias.name}" for alias in node.names} | {node.module or ""}
    return found


def test_the_registry_imports_no_implementation_family():
    ours = {m for m in imported_modules(REGISTRY) if m.split(".")[0] == "moe_impls"}
    assert ours == set(), f"registry.py imports {sorted(ours)}: families register themselves instead"


def test_the_check_sees_an_import_hidden_in_a_function(tmp_path):
    planted = tmp_path / "registry.py"
    planted.write_text("def resolve(name):\n    from moe_impls import peers, plugins\n")
    assert {"moe_impls.peers", "moe_impls.plugins"} <= imported_modules(planted)


@pytest.fixture
def empty_registry(monkeypatch):
    monkeypatch.setattr(registry, "_IMPLS", {"loop": moe_impls.get("loop")})
    monkeypatch.setattr(registry, "_UNAVAILABLE", {})
    monkeypatch.setattr(registry, "_RESOLVERS", [])


def test_a_name_registered_unavailable_raises_its_reason(empty_registry):
    registry.register_unavailable("gpu_only", "needs a GPU, none here")
    with pytest.raises(KeyError, match="'gpu_only': needs a GPU, none here"):
        registry.resolve("gpu_only")
    assert not registry.is_known("gpu_only") and registry.names() == ["loop"]


def test_a_resolver_answers_its_own_names_and_lists_its_forms_when_a_name_is_unknown(empty_registry):
    made = Impl("x:y", lambda weights: None, "plugin")
    registry.register_resolver(Resolver(lambda name: made if name == "x:y" else None, lambda: ["a.b:c"]))
    assert registry.resolve("x:y") is made and registry.resolve("loop").layer_cls is moe_impls.get("loop")
    with pytest.raises(KeyError) as caught:
        registry.resolve("nope")
    assert caught.value.args[0] == "unknown implementation 'nope'; known: loop, or a.b:c"


def test_the_unknown_name_error_is_one_line_listing_the_builtins_compiled_and_plugin_forms():
    with pytest.raises(KeyError) as caught:
        moe_impls.resolve("nope")
    message = caught.value.args[0]
    assert "\n" not in message and message.startswith("unknown implementation 'nope'; known: ")
    assert all(name in message for name in [*moe_impls.names(), "<impl>+compile", "module.path:factory"])


def test_compile_suffix_still_resolves_and_refuses_twice():
    impl = moe_impls.resolve("loop+compile")
    assert impl.compiled and impl.kind == "builtin+compile" and impl.layer_cls is moe_impls.get("loop")
    with pytest.raises(KeyError, match="compiled twice"):
        moe_impls.resolve("loop+compile+compile")
    assert not registry.is_known("+compile")


def test_the_dense_baseline_names_are_defined_once_and_build_the_baselines():
    assert moe_impls.DENSE_BASELINES == ("param_matched", "flop_matched")
    assert tuple(moe_impls.BASELINES) == moe_impls.DENSE_BASELINES
