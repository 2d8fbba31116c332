from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


@pytest.fixture
def tiny_suite() -> Path:
    return DATA / "tiny.toml"
