"""One room per job, with dependencies flowing one way: moe_impls (the layers) -> suites (the instrument) ->
reports (reading, showing, judging); analysis (accounting, formulas, cost models, experiments) uses moe_impls
and never the instrument or its reports. Only command functions (the composition root) may reach into reports,
and reports reads nothing of suites but its results schema. Imports are checked wherever they stand, inside
functions too."""

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]

# moe_impls knows nothing of timing: the instrument times the layers from outside.
TIMING = ("time", "timeit", "torch.profiler", "torch.autograd.profiler", "torch.utils.benchmark", "torch.cuda.Event")


@dataclass(frozen=True)
class Source:
    """One module's code and where it sits: `module` is dotted (`moe_impls.layer`, `moe_impls` for __init__)."""

    module: str
    is_package: bool
    text: str

    @classmethod
    def read(cls, path: Path) -> "Source":
        parts = path.relative_to(ROOT).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        return cls(".".join(parts[:-1] if is_package else parts), is_package, path.read_text())


def imports(src: Source) -> list[tuple[str, ast.AST]]:
    """Every name an import statement brings in, dotted in full (`from a import b` gives `a.b`; relative imports
    are resolved against the module's package), with the statement."""
    package = src.module.split(".") if src.is_package else src.module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(src.text)):
        if isinstance(node, ast.Import):
            found += [(a.name, node) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = [*base, *([node.module] if node.module else [])]
            found += [(".".join([*module, a.name]), node) for a in node.names]
    return found


def attribute_chains(src: Source) -> list[str]:
    """Dotted names the code spells out, such as `torch.cuda.Event` in `torch.cuda.Event(enable_timing=True)`."""
    chains = []
    for node in ast.walk(ast.parse(src.text)):
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if parts and isinstance(node, ast.Name):
            chains.append(".".join([node.id, *reversed(parts)]))
    return chains


def within(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def enclosing_functions(src: Source) -> dict[int, str]:
    """Line -> name of the function a line sits in (module level lines are absent)."""
    lines = {}
    for node in ast.walk(ast.parse(src.text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for line in range(node.lineno, (node.end_lineno or node.lineno) + 1):
                lines.setdefault(line, node.name)
    return lines


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def moe_impls_violations(src: Source) -> list[str]:
    bad = [n for n, _ in imports(src) if within(n, ("suites", "reports", "analysis", *TIMING))]
    return bad + [c for c in attribute_chains(src) if within(c, TIMING)]


def analysis_violations(src: Source) -> list[str]:
    return [n for n, _ in imports(src) if within(n, ("suites", "reports"))]


def reports_violations(src: Source) -> list[str]:
    return [n for n, _ in imports(src) if within(n, ("suites",)) and not within(n, ("suites.schema",))]


def suites_violations(src: Source) -> list[str]:
    inside = enclosing_functions(src)
    return [n for n, node in imports(src) if within(n, ("reports",)) and node.lineno not in inside]


RULES = {
    "moe_impls": moe_impls_violations,
    "analysis": analysis_violations,
    "reports": reports_violations,
    "suites": suites_violations,
}


@pytest.mark.parametrize("package", sorted(RULES))
def test_each_package_keeps_to_its_imports(package):
    found = {str(p.relative_to(ROOT)): RULES[package](Source.read(p)) for p in sources(package)}
    assert not {path: names for path, names in found.items() if names}


@pytest.mark.parametrize(
    ("package", "code", "caught"),
    [
        ("moe_impls", "import time\n", True),
        ("moe_impls", "from time import perf_counter\n", True),
        ("moe_impls", "from torch import profiler\n", True),
        ("moe_impls", "import torch.utils.benchmark as bench\n", True),
        ("moe_impls", "import torch\nstart = torch.cuda.Event(enable_timing=True)\n", True),
        ("moe_impls", "from torch.cuda import Event\n", True),
        ("moe_impls", "def f():\n    from analysis import flops\n", True),
        ("moe_impls", "from .. import suites\n", True),
        ("moe_impls", "import torch\nimport timeline\n", False),
        ("analysis", "def f():\n    from reports.collapse import render_collapse\n", True),
        ("analysis", "import suites.spec\n", True),
        ("analysis", "from moe_impls import losses\nimport suitesx\n", False),
        ("reports", "from suites import schema\nfrom suites.schema import COLUMNS\n", False),
        ("reports", "from suites import runner\n", True),
        ("suites", "from reports.render import render_report\n", True),
        ("suites", "def cmd(args):\n    from reports.render import render_report\n", False),
    ],
)
def test_a_violating_import_is_caught(package, code, caught):
    """Each rule fails on a module that breaks it and passes one that keeps it."""
    assert bool(RULES[package](Source(f"{package}.probe", False, code))) == caught
