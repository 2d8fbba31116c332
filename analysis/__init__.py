"""Analysis around the layers: whole-model accounting and presets, FLOP and byte formulas, the expert-parallel
cost model, `moe-bench calc`, and experiments such as router collapse.

It uses `moe_impls` and is used by the CLI and the instrument; it never imports `suites` or `reports`.
"""
