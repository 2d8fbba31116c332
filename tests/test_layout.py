"""Dependencies flow one way: moe_impls -> suites -> reports. Only command entry points (the composition
root) may reach into reports, and reports reads nothing of suites but its results schema."""

import ast
from pathlib import Path

ROOT = Path(__file__).parents[1]


def imports(path: Path) -> list[tuple[str, ast.AST]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, node) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node))
    return found


def enclosing_functions(path: Path) -> dict[int, str]:
    """Line -> name of the function a line sits in (module level lines are absent)."""
    lines = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for line in range(node.lineno, (node.end_lineno or node.lineno) + 1):
                lines.setdefault(line, node.name)
    return lines


def test_moe_impls_knows_nothing_of_timing_or_rendering():
    for path in (ROOT / "moe_impls").rglob("*.py"):
        for name, _ in imports(path):
            assert not name.startswith(("suites", "reports")), f"{path.relative_to(ROOT)} imports {name}"


def test_reports_read_only_the_results_schema_of_suites():
    for path in (ROOT / "reports").rglob("*.py"):
        for name, _ in imports(path):
            if name.startswith("suites"):
                assert name == "suites.schema", f"{path.relative_to(ROOT)} imports {name}"


def test_suites_reach_reports_only_inside_command_functions():
    for path in (ROOT / "suites").rglob("*.py"):
        inside = enclosing_functions(path)
        for name, node in imports(path):
            if name.startswith("reports"):
                where = inside.get(node.lineno)
                assert where is not None, f"{path.relative_to(ROOT)} imports {name} at module level"
