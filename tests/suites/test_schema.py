"""The one definition of the latency summary and of a usable timing value, shared by writer and reader."""

import math

import numpy as np
import pytest

from reports.load import load_run
from suites.schema import LATENCY_SUMMARY_COLUMNS, is_finite_number, is_positive_number, latency_summary
from suites.stats import Stats
from tests.reports import synth


def test_latency_summary_by_hand():
    # rows [1, 2, 3, 4, 100] and [2, 2, 2, 2, 2]; row 1: p10 at position 0.4 -> 1.4, p25 = 2, p75 = 4, mean 22
    summary = latency_summary(np.array([[4.0, 100.0, 1.0, 3.0, 2.0], [2.0] * 5]))
    assert list(summary) == list(LATENCY_SUMMARY_COLUMNS)
    assert summary["latency_ms_median"].tolist() == [3.0, 2.0]
    assert summary["latency_ms_mean"].tolist() == [22.0, 2.0]
    assert summary["latency_ms_min"].tolist() == [1.0, 2.0]
    assert summary["latency_ms_iqr"].tolist() == [2.0, 0.0]
    assert summary["latency_ms_p10"] == pytest.approx([1.4, 2.0])
    assert summary["latency_ms_p90"] == pytest.approx([61.6, 2.0])
    assert summary["latency_ms_p99"] == pytest.approx([96.16, 2.0])


def test_the_loader_fills_in_exactly_what_the_runner_writes(tmp_path):
    samples = [2.907, 1.138, 2.686, 0.733]  # two summaries here rounded apart when each side computed its own
    written = Stats.of(samples).columns()
    synth.write_run(tmp_path, [{"impl": "loop", "tokens": 8, "samples_ms": samples}])
    _, df = load_run(tmp_path)
    for col in LATENCY_SUMMARY_COLUMNS:
        assert df.loc[0, col] == written[col], col


@pytest.mark.parametrize(
    ("value", "finite", "positive"),
    [
        (1, True, True),
        (0.5, True, True),
        (0, True, False),
        (-2.0, True, False),
        (math.inf, False, False),
        (math.nan, False, False),
        (True, False, False),
        ("1", False, False),
        (None, False, False),
    ],
)
def test_a_number_is_an_int_or_float_never_a_bool_nan_or_infinity(value, finite, positive):
    assert (is_finite_number(value), is_positive_number(value)) == (finite, positive)
