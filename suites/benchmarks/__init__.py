"""pytest-benchmark views of the key suite points: `pytest suites/ --benchmark-autosave`, then gate later runs
with `--benchmark-compare --benchmark-compare-fail=median:10%`. Not part of the default test run."""
