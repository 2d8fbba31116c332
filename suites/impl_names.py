"""Whether a name can be run, and if not why, in one line: the one check behind a suite's `impls`, `--only`
and `--impl`.

Runnable: a registered implementation, `<impl>+compile`, a plug-in (an entry point's name or
module.path:factory), and, for a suite or `--only`, `expert_parallel` (run on ranks by suites/ep_run.py, so
never a plug-in). The reason is the one moe_impls.resolve gives: an unknown name with the known ones, or a
transformers peer that is absent here and why.
"""

from __future__ import annotations

import moe_impls
from suites.schema import EP_IMPL


def why_not_buildable(name: str) -> str | None:
    """None when moe_impls can build `name` into a single-process layer, else why not."""
    try:
        moe_impls.resolve(name)
    except KeyError as exc:
        return str(exc.args[0])
    return None


def why_not_runnable(name: str) -> str | None:
    """None when a suite may run `name` (a layer moe_impls builds, or expert_parallel on ranks), else why not."""
    return None if name == EP_IMPL else why_not_buildable(name)
