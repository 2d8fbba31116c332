import os

import pytest
import torch
from hypothesis import settings

settings.register_profile("ci", max_examples=120, deadline=None, derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
torch.set_num_threads(min(torch.get_num_threads(), 2))


def pytest_collection_modifyitems(config, items):
    # Tests that assert ratios of timings run first, before the rest of the suite has spawned workers and ranks
    # and filled the memory: a benchmark is taken on the quietest machine it can have, and so are these.
    items.sort(key=lambda item: "timing" not in item.keywords)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
