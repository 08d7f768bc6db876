"""The house's plan, read from the imports: the science (`benchmark`) imports neither Ray nor MLflow, the
experiment design (`ray_jobs.grid`) neither Ray nor MLflow either, and no import circle runs across modules,
deferred imports included (those under `if TYPE_CHECKING:` excepted)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("benchmark", "ray_jobs", "analysis")

def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(tree: ast.AST, modules: dict[str, Path]) -> set[str]:
    found: set[str] = set()
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                      for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        found |= _imports(node, modules)
    return {name for name in found if name in modules}


def _circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(component)

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in graph:
        if v not in index:
            visit(v)
    return circles


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(ast.parse(path.read_text()), modules) - {name} for name, path in modules.items()}


def test_no_import_circle():
    assert [sorted(c) for c in _circles(_graph())] == []


def test_the_circle_finder_finds_a_circle():
    """Mutation test of the check: a deferred import from the table model back to the leaderboard is a circle."""
    graph = _graph()
    graph["analysis.table"] = graph["analysis.table"] | {"analysis.leaderboard"}
    assert any({"analysis.table", "analysis.leaderboard"} <= circle for circle in _circles(graph))


@pytest.mark.parametrize("prefix", ["benchmark.", "ray_jobs.grid."])
def test_the_science_and_the_experiment_design_import_neither_ray_nor_mlflow(prefix: str):
    science = sorted(name for name in _modules() if name.startswith(prefix) and name != "benchmark.cli")
    probe = (f"import importlib, sys\nfor name in {science!r}: importlib.import_module(name)\n"
             "print(sorted(m for m in ('ray', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
