"""`moe-bench` (also `python -m suites`): one argparse parser; each command module adds its own subparser.

A command module exposes `register(subparsers)`, which adds a parser and sets `func=callable(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = (
    "suites.commands",
    "suites.gpu_smoke",
    "reports.cli",
    "analysis.calc",
    "suites.experiment_commands",
    "suites.models_command",
    "suites.neighbours",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moe-bench", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
