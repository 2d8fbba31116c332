"""`moe-bench neighbours`: with-neighbours / alone per row, tries in alternating order, through a real worker."""

from __future__ import annotations

import re

from suites import spec
from suites.cli import main
from suites.neighbours import RETAKES, PointRatios, exit_code, measure, render, verdict

TINY = """
description = "one small point, two rows"
seed = 0
impls = ["sort_group"]
baselines = ["flop_matched"]
dtypes = ["float32"]
modes = ["forward"]
routing = ["softmax_topk"]

[timing]
budget_ms = 40
min_time_ms = 10
warmup_ms = 2
retimes = 0
energy_ms = 0

[[shapes]]
name = "tiny"
d_model = 32
d_ff = 64
num_experts = 4
top_k = 2
tokens = [8]
"""


def test_each_try_alternates_which_side_runs_first_and_a_cell_is_the_median_ratio():
    """A stand-in for the worker that records the order and answers 2 ms with neighbours and, alone, 4 ms at a
    row's third call and 1 ms otherwise. It flags b's first two timings alone as disturbed, as the runner flags a
    window whose probes moved: those tries of b are left out and taken again, timing alone only the rows still
    short of steady tries (b), until b has 3. A row it never measures is None and not timed again."""
    point = spec.load("smoke").points[0]
    calls: list[tuple[str, ...]] = []
    alone_calls = {"a": 0, "b": 0}

    def run_point(p, todo):
        calls.append(tuple(todo))
        if len(todo) > 1:
            return [{"impl": r, "status": "ok", "latency_ms_median": 2.0} for r in todo if r != "lost"]
        (r,) = todo
        if r == "lost":
            return [{"impl": r, "status": "error", "latency_ms_median": None}]
        alone_calls[r] += 1
        ms = 4.0 if alone_calls[r] == 3 else 1.0
        return [{"impl": r, "status": "ok", "latency_ms_median": ms, "disturbed": r == "b" and alone_calls[r] <= 2}]

    (cell,) = list(measure([point], ["a", "b", "lost"], run_point, tries=3))
    both = ("a", "b", "lost")
    first_three = [both, ("a",), ("b",), ("lost",), ("b",), ("a",), both, both, ("a",), ("b",)]
    assert calls == [*first_three, ("b",), both, both, ("b",)], calls  # two more tries, b alone each
    assert cell.tries == {"a": [2.0, 2.0, 0.5], "b": [0.5, 2.0, 2.0], "lost": []}
    assert cell.ratios == {"a": 2.0, "b": 2.0, "lost": None} and (cell.disturbed, cell.timings) == (2, 14)
    assert cell.left_out == {"a": 0, "b": 2, "lost": 0}
    assert exit_code([cell], 0.05) == 1  # a row not measured
    text = render([cell], ["a", "b", "lost"], 0.05)
    assert "| 2.000 | 2.000 | - | 2 of 14 |" in text
    assert "0 of 3 cells within 5% (2.000 to 2.000); 0 outside it on every try; 2 without a verdict" in text
    assert "; 1 not measured (a row failed)" in text
    assert "2 of 14 timings were flagged as taken on a disturbed machine" in text
    assert "2 tries of a row that had one were left out of its cell and taken again" in text
    # a cell outside shows its tries: these lie on both sides of 1
    assert f"- a at {cell.label}: 2.000 (no verdict), tries 2.00, 2.00, 0.50" in text.splitlines(), text


def test_a_row_with_no_steady_try_has_no_verdict_and_is_timed_at_most_retakes_times_tries():
    """Every timing of b alone flagged: b gets RETAKES x 2 tries, none of which counts, and no verdict (exit 3),
    while a, steady, is judged from its first 2 tries."""
    point = spec.load("smoke").points[0]
    calls: list[tuple[str, ...]] = []

    def run_point(p, todo):
        calls.append(tuple(todo))
        return [{"impl": r, "status": "ok", "latency_ms_median": 1.0, "disturbed": todo == ["b"]} for r in todo]

    (cell,) = list(measure([point], ["a", "b"], run_point, tries=2))
    assert calls.count(("b",)) == RETAKES * 2 and calls.count(("a",)) == 2
    assert cell.ratios == {"a": 1.0, "b": None} and cell.left_out["b"] == RETAKES * 2
    assert exit_code([cell], 0.05) == 3
    assert "1 of 2 cells within 5% (1.000 to 1.000); 0 outside it on every try; 1 without a steady try" in render(
        [cell], ["a", "b"], 0.05
    )


def test_a_row_steady_in_one_order_only_is_taken_again_and_then_has_no_verdict():
    """b's timings alone are flagged in every try that times the rows alone first (its 2nd, 4th, ... alone), as a
    host that drifts in step with the tries would: b's two steady tries both ran round-robin first, so it is taken
    again up to RETAKES x --tries tries, and then has no verdict (exit 3), however far from 1 its tries lie."""
    point = spec.load("smoke").points[0]
    calls: list[tuple[str, ...]] = []
    b_alone = 0

    def run_point(p, todo):
        nonlocal b_alone
        calls.append(tuple(todo))
        b_alone += todo == ["b"]
        ms = 1.0 if todo == ["b"] else 1.5
        return [
            {"impl": r, "status": "ok", "latency_ms_median": ms, "disturbed": todo == ["b"] and b_alone % 2 == 0}
            for r in todo
        ]

    (cell,) = list(measure([point], ["a", "b"], run_point, tries=2))
    assert calls.count(("b",)) == RETAKES * 2 and calls.count(("a",)) == 2
    assert cell.tries == {"a": [1.0, 1.0], "b": [1.5, 1.5]} and cell.one_sided == {"b"}
    assert exit_code([cell], 0.05) == 3
    text = render([cell], ["a", "b"], 0.05)
    assert (
        "1 of 2 cells within 5% (1.000 to 1.500); 0 outside it on every try; 1 without a verdict (steady tries" in text
    )
    assert f"- b at {cell.label}: 1.500 (no verdict, one order), tries 1.50, 1.50" in text.splitlines(), text
    (alone_once,) = list(measure([point], ["a", "b"], run_point, tries=1))
    assert not alone_once.one_sided  # one try asked: one order is all there is


def _cell(tries: dict[str, list[float]]) -> PointRatios:
    ratios = {r: sorted(t)[len(t) // 2] for r, t in tries.items()}
    return PointRatios("p", ratios, tries, timings=0, disturbed=0)


def test_a_cell_outside_is_a_miss_only_when_every_try_is_on_one_side_of_1():
    """The tries of two cells on a host whose memory bandwidth swung by up to 17% within a minute (small-8x2,
    16 tokens, cold): param_matched's straddled 1 by far more than the tolerance, so they say nothing of the protocol;
    a row the neighbours slow every time is a miss even when one try falls within the tolerance."""
    assert verdict(1.104, [1.242, 1.332, 0.881, 0.967], 0.05) == "spread"
    assert verdict(1.095, [1.10, 1.12, 1.03, 1.09], 0.05) == "miss"
    assert verdict(0.90, [0.88, 0.91, 0.97], 0.05) == "miss"
    assert verdict(1.04, [1.2, 0.9, 1.04], 0.05) == "within"
    assert verdict(None, [], 0.05) == "unmeasured"
    within, spread, miss = _cell({"a": [1.01, 0.98]}), _cell({"a": [1.3, 0.9, 1.2]}), _cell({"a": [1.2, 1.1, 1.3]})
    assert [exit_code(t, 0.05) for t in ([within], [within, spread], [spread, miss])] == [0, 3, 1]
    text = render([within, spread, miss], ["a"], 0.05)
    assert "1 of 3 cells within 5% (1.010 to 1.200); 1 outside it on every try; 1 without a verdict" in text
    assert "- a at p: 1.200 (miss), tries 1.20, 1.10, 1.30" in text.splitlines(), text


def test_the_command_times_a_point_with_and_without_its_neighbours(tmp_path, capsys):
    suite = tmp_path / "tiny.toml"
    suite.write_text(TINY)
    code = main(["neighbours", str(suite), "--tries", "2", "--within", "0.5"])
    out = capsys.readouterr().out
    (row,) = [line for line in out.splitlines() if line.startswith("| tiny T=8 float32 forward softmax_topk |")]
    cells = [c.strip() for c in row.strip(" |").split("|")[1:-1]]
    assert re.fullmatch(r"\d+ of \d+", row.strip(" |").split("|")[-1].strip()), row  # together and each row alone
    # "-": no try of the row on a steady machine (its probes flagged every window), which the summary says
    steady = [float(c) for c in cells if c != "-"]
    assert len(cells) == 2 and all(0.3 < c < 3 for c in steady), row
    match = re.search(r"(\d+) of 2 cells within 50%.*?; (\d+) outside it on every try", out)
    assert match, out
    assert (len(steady) < 2) == ("without a steady try" in out), out
    assert code == (0 if match.group(1) == "2" else 1 if match.group(2) != "0" else 3)


def test_bad_arguments_are_one_line_and_exit_2(tmp_path, capsys):
    suite = tmp_path / "tiny.toml"
    suite.write_text(TINY)
    for argv, words in [
        (["neighbours", str(tmp_path / "none.toml")], "no such suite file"),
        (["neighbours", str(suite), "--only", "loop"], "--only: expected rows of suite"),
        (["neighbours", str(suite), "--tries", "0"], "--tries: expected at least 1"),
        (["neighbours", str(suite), "--within", "2"], "--within: expected a fraction"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and "\n" not in err, err
