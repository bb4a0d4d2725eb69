"""The collector and the report path stand apart from the backup store: nothing under `agent.collector`
or `agent.report` imports `agent.store`, directly or through another module, lazily or not (a collector
host installs the same package but never opens a repository)."""

from __future__ import annotations

from typing import Dict, Set

from tests.unit.test_imports import import_graph


def reachable(graph: Dict[str, Set[str]], start: str) -> Set[str]:
    seen, todo = set(), [start]
    while todo:
        module = todo.pop()
        for target in graph.get(module, ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_collector_and_report_import_nothing_from_the_store():
    graph = import_graph()
    roots = [m for m in graph if m.split(".")[:2] in (["agent", "collector"], ["agent", "report"])]
    assert "agent.collector.app" in roots and "agent.report.sender" in roots
    leaks = {root: sorted(m for m in reachable(graph, root) if m == "agent.store" or m.startswith("agent.store."))
             for root in roots}
    assert {root: found for root, found in leaks.items() if found} == {}
