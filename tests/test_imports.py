"""The project's modules depend on each other one way: no import cycle, at module or function level.

The graph is read from the import statements (parsed, never executed), so an import inside a function
or under `if TYPE_CHECKING:` counts like any other: a late import cannot hide a cycle. Importing
`a.b.c` also runs the packages `a` and `a.b`, so it counts as importing them too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PACKAGES = ("adfq_sim", "hw_models", "reports")


def module_files(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under the packages (a package is its __init__)."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _with_packages(name: str, modules: dict[str, Path]) -> set[str]:
    """`name` and every package above it, those that are project modules."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & modules.keys()


def imported_modules(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules that `module` imports anywhere in its file."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found |= _with_packages(alias.name, modules)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's own package, then up one per extra dot
                anchor = module.split(".")[:len(module.split(".")) - node.level + is_package]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module
            found |= _with_packages(base, modules)
            found |= {f"{base}.{alias.name}" for alias in node.names} & modules.keys()
    return found - {module}


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    modules = module_files(root, packages)
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def tangles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components with more than one module: each holds an import cycle."""
    order: list[str] = []
    seen: set[str] = set()

    def finish(node: str) -> None:
        seen.add(node)
        for succ in graph[node]:
            if succ not in seen:
                finish(succ)
        order.append(node)

    for node in sorted(graph):
        if node not in seen:
            finish(node)
    reverse: dict[str, set[str]] = {node: set() for node in graph}
    for node, succs in graph.items():
        for succ in succs:
            reverse[succ].add(node)
    assigned: set[str] = set()
    components = []
    for node in reversed(order):
        if node in assigned:
            continue
        component, stack = set(), [node]
        while stack:
            current = stack.pop()
            if current not in assigned:
                assigned.add(current)
                component.add(current)
                stack.extend(reverse[current] - assigned)
        components.append(component)
    return sorted((c for c in components if len(c) > 1), key=min)


def shortest_cycle(graph: dict[str, set[str]], tangle: set[str]) -> list[str]:
    """A shortest cycle [a, b, ..., a] through the tangle's first module (breadth first within it)."""
    start = min(tangle)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        node = frontier.pop(0)
        for succ in sorted(graph[node] & tangle):
            if succ == start:
                path = [node]
                while path[-1] != start:
                    path.append(parents[path[-1]])
                return path[::-1] + [start]
            if succ not in parents:
                parents[succ] = node
                frontier.append(succ)
    raise AssertionError(f"no cycle through {start}: {sorted(tangle)} is not a tangle")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per tangle."""
    return [shortest_cycle(graph, tangle) for tangle in tangles(graph)]


def test_project_modules_import_one_way() -> None:
    graph = import_graph(ROOT, PACKAGES)
    assert len(graph) > 50 and "adfq_sim.config" in graph["adfq_sim.pipeline"]  # the parse found the project
    found = tangles(graph)
    assert not found, "import cycles:\n" + "\n".join(
        f"{' -> '.join(shortest_cycle(graph, tangle))}  (tangled: {', '.join(sorted(tangle))})" for tangle in found)


@pytest.mark.parametrize("source, cycle", [
    ("def f():\n    from pkg import b\n", ["pkg.a", "pkg.b", "pkg.a"]),  # late import of a submodule
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.b\n", ["pkg.a", "pkg.b", "pkg.a"]),
    ("from . import b\n", ["pkg.a", "pkg.b", "pkg.a"]),
    ("import os\n", None),
])
def test_the_graph_sees_every_kind_of_import(tmp_path: Path, source: str, cycle: list[str] | None) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text('"""A package that imports nothing."""\n')
    (tmp_path / "pkg" / "a.py").write_text(source)
    (tmp_path / "pkg" / "b.py").write_text("from pkg.a import f\n")
    assert cycles(import_graph(tmp_path, ("pkg",))) == ([cycle] if cycle else [])


def test_a_package_init_importing_its_submodule_counts(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("from pkg.a import f\n")
    (tmp_path / "pkg" / "a.py").write_text("from pkg.b import g\n")  # runs pkg's __init__ first
    (tmp_path / "pkg" / "b.py").write_text("def g():\n    pass\n")
    assert cycles(import_graph(tmp_path, ("pkg",))) == [["pkg", "pkg.a", "pkg"]]
