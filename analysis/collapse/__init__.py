"""Router collapse with and without balancing: one small MoE model trained under six settings from one seed.

The task is a mixture of C linear regression sub-tasks; an input's cluster decides which one applies, so
E = C experts can each specialise. The unbalanced router collapses onto a few experts because the inputs
share a large common offset (as real hidden states do): a router update along that shared direction raises
an expert's logit for every token at once, so the expert that wins early wins everywhere, trains faster and
keeps winning. A small router initialisation (near-uniform routing at the start) makes the winner come from
noise rather than from the initial weights. Everything is measured per step and written to
`collapse.jsonl` (one row per setting x step) and `collapse_meta.json`; `reports.collapse` renders them.

Rooms: `settings` (the sizes and the arms), `train` (the task, the model and one arm's training loop),
`output` (the files it writes), `experiment` (every arm in turn, timed, into those files).
"""
