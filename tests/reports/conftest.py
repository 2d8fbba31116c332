from pathlib import Path

import pytest

from tests.reports import synth

REAL_RUN = Path(__file__).parent / "data" / "smoke_run"


@pytest.fixture(scope="session")
def synthetic_run(tmp_path_factory) -> Path:
    """One (shape, dtype, mode) group with skewed routings and a wrong, an oom, an error and a skipped point."""
    return synth.write_run(tmp_path_factory.mktemp("synthetic") / "run", synth.make_rows())


@pytest.fixture(scope="session")
def rendered(synthetic_run, tmp_path_factory) -> Path:
    from reports.render import render_report

    return render_report(synthetic_run, tmp_path_factory.mktemp("report"))
