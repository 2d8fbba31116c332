"""A plug-in whose import fails, as one with a missing dependency would."""

import moe_bench_no_such_dependency  # noqa: F401


def make_layer(cfg, weights):  # pragma: no cover - never reached
    raise AssertionError("unreachable")
