import numpy as np
import pandas as pd
import pytest

from reports.compare import CompareInputError, compare_frames
from reports.compare_options import parse_threshold
from reports.load import normalise
from suites.cli import main
from tests.reports import synth

SMALL = {"tokens": (16, 4096), "skew_tokens": None, "failures": False}


def frame(rows):
    return normalise(pd.DataFrame(rows))


def test_identical_distributions_are_not_regressions():
    """Two independent draws from the same distributions: at most 5 of 100 comparisons may fail CI."""
    failures = 0
    template = frame(synth.make_rows(seed=1, **SMALL))  # verdicts read only the raw samples, which we redraw

    def draw(noise_seed):
        rows = synth.make_rows(seed=1, noise_seed=noise_seed, **SMALL)
        return template.assign(samples_ms=[r["samples_ms"] for r in rows])

    for trial in range(100):
        result = compare_frames(draw(2 * trial), draw(2 * trial + 1), n_boot=300, seed=trial)
        failures += result.exit_code
        assert result.count("faster") + result.count("slower") <= 1
    assert failures <= 5


def test_planted_slowdown_is_flagged(tmp_path, capsys):
    base = synth.make_rows(seed=1, noise_seed=1)
    new = synth.scaled(synth.make_rows(seed=1, noise_seed=2), 1.2, impls=("sort_group",))
    synth.write_run(tmp_path / "base", base)
    synth.write_run(tmp_path / "new", new)
    assert main(["compare", str(tmp_path / "base"), str(tmp_path / "new"), "--threshold", "5%"]) == 1
    table = capsys.readouterr().out
    slower = [line for line in table.splitlines() if "**slower**" in line]
    assert slower and all("| sort_group |" in line for line in slower)
    assert len(slower) == sum(r["impl"] == "sort_group" and r["status"] == "ok" for r in new)
    assert "**FAIL**" in table


def test_ratio_metric_ignores_a_uniformly_slower_machine(tmp_path, capsys):
    base = synth.make_rows(seed=1, noise_seed=1, **SMALL)
    new = synth.scaled(synth.make_rows(seed=1, noise_seed=2, **SMALL), 1.3)
    synth.write_run(tmp_path / "base", base)
    synth.write_run(tmp_path / "new", new, synth.meta(device_name="Another GPU"))
    assert main(["compare", str(tmp_path / "base"), str(tmp_path / "new")]) == 1
    assert "use --metric ratio" in capsys.readouterr().out
    assert main(["compare", str(tmp_path / "base"), str(tmp_path / "new"), "--metric", "ratio"]) == 0
    out = capsys.readouterr().out
    assert "slower" not in out.split("**PASS**")[0] and "| flop_matched |" not in out
    # ... yet still sees one implementation slowing down beyond the machine's drift
    worse = synth.scaled(synth.scaled(synth.make_rows(seed=1, noise_seed=3, **SMALL), 1.3), 1.2, impls=("padded",))
    result = compare_frames(frame(base), frame(worse), metric="ratio")
    assert {p.impl for p in result.points if p.verdict == "slower"} == {"padded"}


def test_ratio_against_a_named_reference_divides_by_that_row(tmp_path, capsys):
    """--reference loop: every row over loop's median; loop slowing with the machine is no regression, sort_group
    slowing 30% more than loop is; a reference that NEW lacks is one line."""
    base = synth.make_rows(seed=1, noise_seed=1, **SMALL)
    new = synth.scaled(synth.scaled(synth.make_rows(seed=1, noise_seed=2, **SMALL), 1.4), 1.3, impls=("sort_group",))
    synth.write_run(tmp_path / "base", base)
    synth.write_run(tmp_path / "new", new)
    args = ["compare", str(tmp_path / "base"), str(tmp_path / "new"), "--metric", "ratio", "--threshold", "15%"]
    assert main([*args, "--reference", "loop"]) == 1
    out = capsys.readouterr().out
    assert {line.split("|")[2].strip() for line in out.splitlines() if "**slower**" in line} == {"sort_group"}
    assert "medians in x loop" in out and "| loop |" not in out
    assert main([*args, "--reference", "loop", "--only", "padded,dense_all"]) == 0, "sort_group is not judged"
    rows = [line.split("|") for line in capsys.readouterr().out.splitlines() if line.startswith("| D512")]
    judged = {cells[2].strip() for cells in rows}
    assert judged == {"padded", "dense_all"}
    assert main([*args, "--only", "sort_grup"]) == 2
    assert "--only: no rows of sort_grup" in capsys.readouterr().err
    assert main([*args, "--reference", "hf_grouped_mm"]) == 2
    assert "--reference hf_grouped_mm: NEW has no hf_grouped_mm rows" in capsys.readouterr().err


def test_a_slowdown_the_confirming_run_does_not_repeat_does_not_fail(tmp_path, capsys):
    """--confirm: sort_group slowed 30% in NEW fails only when the second run of the same code slows it too, even
    where the canary flagged both runs; a row slowed in the confirming run alone is not judged there, and a missing
    confirming run is one line."""
    base = synth.make_rows(seed=1, noise_seed=1, **SMALL)
    slow = synth.scaled(synth.make_rows(seed=1, noise_seed=2, **SMALL), 1.3, impls=("sort_group",))
    steady = synth.scaled(synth.make_rows(seed=1, noise_seed=3, **SMALL), 1.3, impls=("padded",))
    again = synth.scaled(synth.make_rows(seed=1, noise_seed=4, **SMALL), 1.3, impls=("sort_group",))
    for name, rows in {"base": base, "new": slow, "steady": steady, "again": again}.items():
        synth.write_run(tmp_path / name, rows)
    args = ["compare", str(tmp_path / "base"), str(tmp_path / "new"), "--metric", "ratio", "--threshold", "15%"]

    assert main([*args, "--confirm", str(tmp_path / "steady")]) == 0
    out = capsys.readouterr().out
    assert "**slower**" not in out and "**PASS**" in out
    unconfirmed = [line for line in out.splitlines() if "not reproduced in the confirming run" in line]
    assert unconfirmed and all("| sort_group |" in line for line in unconfirmed)
    padded = [line for line in out.splitlines() if "| padded |" in line]
    assert padded and all(line.endswith("| same |") for line in padded), "judged in NEW, where it is not slower"

    assert main([*args, "--confirm", str(tmp_path / "again")]) == 1
    out = capsys.readouterr().out
    slower = [line for line in out.splitlines() if "**slower**" in line]
    assert slower and all("| sort_group |" in line for line in slower)
    assert main([*args]) == 1, "without --confirm the first run's slowdown fails"
    capsys.readouterr()
    for name, rows in {"slow_disturbed": slow, "again_disturbed": again}.items():
        synth.write_run(tmp_path / name, _disturbed(rows))
    disturbed = ["compare", str(tmp_path / "base"), str(tmp_path / "slow_disturbed"), *args[3:]]
    assert main(disturbed) == 0, "a disturbed run alone gives no verdict"
    assert "**slower**" not in capsys.readouterr().out
    assert main([*disturbed, "--confirm", str(tmp_path / "again_disturbed")]) == 1
    out = capsys.readouterr().out
    slower = [line for line in out.splitlines() if "**slower**" in line]
    assert slower and all("| sort_group |" in line and "slower in the confirming run too" in line for line in slower)
    assert all("disturbed in NEW: cpu pressure" in line for line in slower), "the disturbance is still named"
    assert main([*disturbed, "--confirm", str(tmp_path / "steady")]) == 0

    assert main([*args, "--confirm", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no such directory" in err and "\n" not in err


def _disturbed(rows: list[dict]) -> list[dict]:
    """`rows` with every point timed on a disturbed machine, as the runner's canary marks one."""
    return [{**r, "disturbed": True, "disturbance": ["cpu pressure: 180 ms stalled > 50 ms"]} for r in rows]


def test_newly_failing_point_fails_ci():
    base = synth.make_rows(**SMALL)
    new = synth.make_rows(noise_seed=5, **SMALL)
    synth.fail(new[0], "wrong", "max_abs_err 1.0 > tolerance 0.02")
    result = compare_frames(frame(base), frame(new))
    assert result.exit_code == 1 and result.broken[0][2] == "wrong"


def test_too_few_samples_is_ambiguous():
    base = synth.make_rows(n_samples=3, **SMALL)
    new = synth.scaled(synth.make_rows(n_samples=3, noise_seed=9, **SMALL), 2.0)
    result = compare_frames(frame(base), frame(new))
    assert result.exit_code == 0 and result.count("ambiguous") == len(result.points)


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        ("missing", "no such directory"),
        ("schema", "schema_version 2 is incompatible"),
        ("disjoint", "share points"),
        ("threshold", "expected a threshold"),
    ],
)
def test_bad_inputs_exit_2_with_one_line(tmp_path, capsys, setup, reason):
    rows = synth.make_rows(**SMALL)
    synth.write_run(tmp_path / "base", rows)
    args = ["compare", str(tmp_path / "base"), str(tmp_path / "new")]
    if setup == "schema":
        synth.write_run(tmp_path / "new", rows, synth.meta(schema_version=2))
    elif setup == "disjoint":
        other = synth.make_rows(tokens=(8,), skew_tokens=None, shapes=((256, 512, 4, 1),), failures=False)
        synth.write_run(tmp_path / "new", other)
    elif setup == "threshold":
        synth.write_run(tmp_path / "new", rows)
        args += ["--threshold", "lots"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert reason in err and "\n" not in err and err.startswith("moe-bench compare: error:")


def test_parse_threshold():
    assert parse_threshold("5%") == pytest.approx(0.05)
    assert parse_threshold("0.05") == pytest.approx(0.05)
    assert parse_threshold("10") == pytest.approx(0.10)
    with pytest.raises(CompareInputError):
        parse_threshold("-3%")


def test_matching_by_parameters_when_point_ids_differ():
    base = synth.make_rows(**SMALL)
    new = synth.make_rows(noise_seed=3, **SMALL)
    for row in new:
        row["point_id"] = "renamed-" + row["point_id"]
    result = compare_frames(frame(base), frame(new))
    assert len(result.points) == len(base)
    assert np.isfinite([p.change for p in result.points]).all()
