"""The trtflow package has no import cycle: each module imports alone in a fresh interpreter,
and no chain of imports (function-level ones included, as the provenance digests read them)
leads from a module back to itself. A cycle works only while every link but one stays inside a
function, and the stage digests (import closures) of every module on it become one."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

import pytest

from conftest import REPO
from trtflow.provenance import _imported_names

PACKAGE = REPO / "trtflow"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: Dict[str, Path] = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def import_graph() -> Dict[str, Set[str]]:
    """module -> the trtflow modules it imports anywhere in its source (packages' __init__ left
    out: importing trtflow.x runs trtflow/__init__.py, which imports nothing of its own)."""
    graph = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        imported = _imported_names(tree, name, path.name == "__init__.py")
        graph[name] = {m for m in imported if m in MODULES and m != name
                       and MODULES[m].name != "__init__.py"}
    return graph


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The import cycles, one per strongly connected component of more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    found: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_of_trtflow_imports_itself_through_others() -> None:
    graph = import_graph()
    assert {"trtflow.data", "trtflow.validate", "trtflow.shapes"} <= set(graph)
    assert cycles(graph) == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_each_module_imports_alone(module: str) -> None:
    done = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
