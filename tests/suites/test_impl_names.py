"""One check says whether a name can run and why not; a suite's impls and --only/--impl all ask it."""

import re

import pytest

from suites import spec
from suites.impl_names import why_not_buildable, why_not_runnable
from suites.schema import EP_IMPL
from tests.suites.test_spec import GOOD


@pytest.mark.parametrize("name", ["loop", "sort_group+compile", "package.module:factory"])
def test_layers_compiled_variants_and_plugins_are_runnable(name):
    assert why_not_buildable(name) is None and why_not_runnable(name) is None


def test_expert_parallel_runs_on_ranks_but_is_no_plugin():
    assert why_not_runnable(EP_IMPL) is None
    assert "unknown implementation 'expert_parallel'" in why_not_buildable(EP_IMPL)


def test_an_unknown_name_says_which_are_known():
    why = why_not_runnable("warp")
    assert why.startswith("unknown implementation 'warp'; known: ") and "loop" in why and "\n" not in why


@pytest.mark.parametrize("name", ["loop", "sort_group+compile", EP_IMPL, "warp", "loop+compile+compile"])
def test_a_suite_accepts_exactly_the_runnable_names(tmp_path, name):
    path = tmp_path / "s.toml"
    path.write_text(GOOD.replace('impls = ["loop"]', f'impls = ["{name}"]'))
    if why_not_runnable(name) is None:
        assert spec.load(str(path)).impls == (name,)
    else:
        with pytest.raises(spec.SuiteError, match=re.escape(f"impls = '{name}'")):
            spec.load(str(path))
