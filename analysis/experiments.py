"""`moe-bench experiment ...`: training experiments that show a phenomenon the article describes, measured.

Each experiment module adds its own sub-command to the `experiment` parser through `register(subparsers)`.
"""

from __future__ import annotations

import argparse

from analysis import collapse

EXPERIMENTS = (collapse,)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("experiment", help="run a training experiment and render its report")
    experiments = parser.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    for module in EXPERIMENTS:
        module.register(experiments)
