"""Suite files: shipped suites load; malformed and impossible ones fail with one line naming file, key, value."""

import pytest

from suites import spec
from suites.cli import main

GOOD = """
impls = ["loop"]
[[shapes]]
d_model = 8
d_ff = 8
num_experts = 4
top_k = 2
tokens = [4]
"""


@pytest.mark.parametrize("name", list(spec.available()))
def test_shipped_suites_load(name):
    suite = spec.load(name)
    assert suite.points and (suite.impls or suite.model_impls)
    assert len({p.point_id for p in suite.points}) == len(suite.points), "two points share an id"


def test_grid_expands_and_shape_overrides_apply():
    suite = spec.load("cpu")
    skewed = [p for p in suite.points if p.routing != "softmax_topk"]
    assert {p.routing for p in skewed} == {"uniform", "zipf:1.2", "hot:0.5", "collapse"}
    assert {p.mode for p in skewed} == {"forward"}


def test_gpu_suite_shapes_come_from_the_model_presets():
    from analysis import models

    suite = spec.load("gpu")
    mixtral = next(p for p in suite.points if p.shape == "mixtral-8x7b")
    layer = models.from_name("mixtral-8x7b").moe_layer().config
    assert (mixtral.d_model, mixtral.d_ff, mixtral.num_experts, mixtral.top_k) == (4096, 14336, 8, 2)
    assert mixtral.d_ff == layer.d_ff
    assert {p.tokens for p in suite.points} >= {1, 16384}


@pytest.mark.parametrize(
    "edit,key,fragment",
    [
        (lambda s: "colour = 'red'\n" + s, "colour", "unknown key"),
        (lambda s: s.replace("top_k = 2", "top_k = 5"), "shapes[0]", "top_k must be <= num_experts"),
        (lambda s: s.replace("d_ff = 8", "d_ff = 'wide'"), "shapes[0].d_ff", "positive integer"),
        (lambda s: s.replace("tokens = [4]", "tokens = [0]"), "shapes[0].tokens", "positive integers"),
        (lambda s: s.replace('impls = ["loop"]', 'impls = ["warp"]'), "impls", "expected one of"),
        (lambda s: 'dtypes = ["float8"]\n' + s, "dtypes", "expected one of"),
        (lambda s: 'routing = ["zipf"]\n' + s, "routing", "zipf:S"),
        (lambda s: 'routing = ["hot:0.9"]\n' + s, "shapes[0]", "hot_fraction must be <= 1/top_k"),
        (lambda s: s + "[timing]\nbudget_ms = 'long'\n", "timing.budget_ms", "expected float"),
        (lambda s: s + "[timing]\nwarp = 1\n", "timing.warp", "unknown key"),
        (lambda s: s.replace("[[shapes]]", "[[shapes]]\nflavour = 1"), "shapes[0].flavour", "unknown key"),
        (lambda s: s.replace("d_model = 8", "preset = 'gpt-5'"), "shapes[0].preset", "gpt-5"),
        (lambda s: s.replace("=", "==", 1), None, "not valid TOML"),
    ],
)
def test_bad_suite_is_one_line_naming_file_key_value(tmp_path, capsys, edit, key, fragment):
    path = tmp_path / "bad.toml"
    path.write_text(edit(GOOD))
    with pytest.raises(spec.SuiteError) as err:
        spec.load(str(path))
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(path)) and fragment in message
    if key:
        assert f": {key} = " in message
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--no-report"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not (tmp_path / "out").exists(), "nothing may run before the suite is valid"


def test_missing_suite_names_the_shipped_ones():
    with pytest.raises(spec.SuiteError, match="no such suite file.*smoke"):
        spec.load("nonexistent")
