"""`moe-bench neighbours`: with-neighbours / alone per row, tries in alternating order, through a real worker."""

from __future__ import annotations

import re

from suites import spec
from suites.cli import main
from suites.neighbours import all_within, measure, render

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
    """A stand-in for the worker that records the order and answers 2 ms with neighbours and, alone, 1 ms at a
    row's first two tries and 4 ms at its third: ratios 2, 2 and 0.5, median 2. A row it never measures is None.
    It flags b's timings alone as disturbed, as the runner flags a point timed beside other load: the point counts
    them and the summary says what such a cell measures."""
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
        return [
            {"impl": r, "status": "ok", "latency_ms_median": 4.0 if alone_calls[r] == 3 else 1.0, "disturbed": r == "b"}
        ]

    (cell,) = list(measure([point], ["a", "b", "lost"], run_point, tries=3))
    both = ("a", "b", "lost")
    assert calls == [both, ("a",), ("b",), ("lost",), ("lost",), ("b",), ("a",), both, both, ("a",), ("b",), ("lost",)]
    assert cell.ratios == {"a": 2.0, "b": 2.0, "lost": None} and (cell.disturbed, cell.timings) == (3, 12)
    assert not all_within([cell], 0.05)
    text = render([cell], ["a", "b", "lost"], 0.05)
    assert (
        "| 2.000 | 2.000 | - | 3 of 12 |" in text and "0 of 3 cells within 5% (2.000 to 2.000); 1 not measured" in text
    )
    assert "3 of 12 timings were flagged as taken on a disturbed machine" in text
    assert f"- a at {cell.label}: 2.000, tries 2.00, 2.00, 0.50" in text.splitlines(), text  # a miss shows its tries


def test_the_command_times_a_point_with_and_without_its_neighbours(tmp_path, capsys):
    suite = tmp_path / "tiny.toml"
    suite.write_text(TINY)
    code = main(["neighbours", str(suite), "--tries", "2", "--within", "0.5"])
    out = capsys.readouterr().out
    (row,) = [line for line in out.splitlines() if line.startswith("| tiny T=8 float32 forward softmax_topk |")]
    cells = [float(c) for c in row.strip(" |").split("|")[1:-1]]
    assert re.fullmatch(r"\d of 6", row.strip(" |").split("|")[-1].strip()), row  # 2 tries: together and each row alone
    assert len(cells) == 2 and all(0.3 < c < 3 for c in cells), row
    match = re.search(r"(\d+) of 2 cells within 50%", out)
    assert match and code == (0 if match.group(1) == "2" else 1)


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
