"""No import cycles in `agent/`: every import counts (at module level, inside functions, under
TYPE_CHECKING), between modules and between the direct children (modules or subpackages) of any package.

A cycle between two children of a package means neither can be understood, tested or replaced without
the other: `watch/` and `snapshot/` importing each other made the snapshot code unusable without the
watcher. The graph is read from the source with `ast`, so nothing is imported to check it.
"""

from __future__ import annotations

import ast
import os
from typing import Dict, List, Set

import agent

ROOT = os.path.dirname(os.path.abspath(agent.__file__))
PACKAGE = "agent"


def module_files() -> Dict[str, str]:
    """module name -> file, for every module of the package (a package is named by its __init__.py)."""
    modules = {}
    for directory, _, files in os.walk(ROOT):
        relative = os.path.relpath(directory, os.path.dirname(ROOT)).replace(os.sep, ".")
        for name in files:
            if name.endswith(".py"):
                stem = name[:-3]
                modules[relative if stem == "__init__" else f"{relative}.{stem}"] = os.path.join(directory, name)
    return modules


def imported_modules(module: str, path: str, modules: Set[str]) -> Set[str]:
    """The modules of the package that `module` imports. `from P import n` counts as importing the
    module P.n when there is one, else P; importing a submodule is not counted as importing its packages
    (their __init__ runs first, but a package's facade importing its own parts is no cycle)."""
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), path)
    found: Set[str] = set()
    for node in ast.walk(tree):  # every node: lazy imports in functions and TYPE_CHECKING blocks too
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = node.module or ""
            if node.level:
                base = module.split(".")
                if not path.endswith("__init__.py"):
                    base = base[:-1]
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                found.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source)
    return (found & modules) - {module}


def import_graph() -> Dict[str, Set[str]]:
    """module -> the modules of the package it imports."""
    files = module_files()
    return {module: imported_modules(module, path, set(files)) for module, path in files.items()}


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components with more than one node (Tarjan), each sorted."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def children_graph(graph: Dict[str, Set[str]], package: str) -> Dict[str, Set[str]]:
    """The imports between the direct children of `package`: each module below it is counted as the child
    it lies in; the package's own __init__ is left out (its imports are checked module by module)."""
    prefix = package + "."

    def child(module: str) -> str:
        return prefix + module[len(prefix):].split(".")[0]

    projected: Dict[str, Set[str]] = {}
    for module, targets in graph.items():
        if not module.startswith(prefix):
            continue
        source = child(module)
        edges = projected.setdefault(source, set())
        edges.update(child(target) for target in targets if target.startswith(prefix) and child(target) != source)
    return projected


def describe(component: List[str], graph: Dict[str, Set[str]]) -> str:
    members = set(component)
    return "; ".join(f"{node} -> {', '.join(sorted(graph[node] & members))}" for node in component)


def test_the_graph_sees_every_kind_of_import(tmp_path):
    """The checker itself: lazy, TYPE_CHECKING, relative and `from package import module` imports."""
    source = tmp_path / "mod.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "import p.a\n"
        "from . import b\n"
        "from .c import name\n"
        "from p import d, helper\n"
        "if TYPE_CHECKING:\n"
        "    from p.e import Type\n"
        "def f():\n"
        "    from ..q import g\n")
    modules = {"p", "p.a", "p.b", "p.c", "p.d", "p.e", "p.mod", "q.g", "q", "p.unused"}
    assert imported_modules("p.mod", str(source), modules) == {"p.a", "p.b", "p.c", "p.d", "p", "p.e", "q.g"}
    graph = import_graph()
    assert "agent.runner" in graph["agent.daemon"]              # module level
    assert "agent.dumps.dumping" in graph["agent.runner"]        # inside a function
    assert "agent.dumps.mysql" in graph["agent.dumps"]           # `from agent.dumps import mysql`, lazily
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    projected = children_graph({"p.x.one": {"p.y"}, "p.y": {"p.x.two"}, "p.x.two": set()}, "p")
    assert cycles(projected) == [["p.x", "p.y"]]


def test_no_import_cycles_between_modules():
    graph = import_graph()
    found = cycles(graph)
    assert not found, "import cycles: " + " | ".join(describe(c, graph) for c in found)


def test_no_import_cycles_between_the_children_of_any_package():
    graph = import_graph()
    packages = sorted(module for module, path in module_files().items() if path.endswith("__init__.py"))
    problems = []
    for package in packages:
        projected = children_graph(graph, package)
        problems += [f"in {package}: {describe(c, projected)}" for c in cycles(projected)]
    assert not problems, "import cycles: " + " | ".join(problems)
