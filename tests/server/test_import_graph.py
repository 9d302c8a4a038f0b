"""server/ has no import cycle: no module imports a module that, directly or not, imports it
back. Every import counts, including those under ``if TYPE_CHECKING:`` and inside functions:
a cycle hidden from the interpreter still ties the modules into one unit for a reader."""

from __future__ import annotations

import ast
from pathlib import Path

SERVER = Path(__file__).resolve().parents[2] / "server"


def imports_of(path: Path) -> set[str]:
    """The server modules ``path`` imports (names relative to the package, e.g. 'hub')."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:  # from . import x / from .x import y
                base = node.module
            elif node.level == 0 and (node.module or "").split(".")[0] == "server":
                base = (node.module or "").partition(".")[2] or None
            else:
                continue
            if base is None:
                found |= {alias.name for alias in node.names}
            else:
                found.add(base.split(".")[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "server" and len(parts) > 1:
                    found.add(parts[1])
    return found


def import_graph() -> dict[str, set[str]]:
    modules = {p.stem: p for p in SERVER.glob("*.py")}
    # The package's __init__ re-exports the public surface; it is the root, not a part.
    return {name: imports_of(path) & (modules.keys() - {"__init__", "__main__"})
            for name, path in modules.items() if name not in ("__init__", "__main__")}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}  # "active" while on the DFS stack, "done" after
    stack: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = "active"
        stack.append(name)
        for dep in sorted(graph.get(name, ())):
            if state.get(dep) == "active":
                return [*stack[stack.index(dep):], dep]
            if dep not in state and (cycle := visit(dep)) is not None:
                return cycle
        stack.pop()
        state[name] = "done"
        return None

    for name in sorted(graph):
        if name not in state and (cycle := visit(name)) is not None:
            return cycle
    return None


def test_server_has_no_import_cycle() -> None:
    graph = import_graph()
    assert {"node", "connection", "http", "hub", "api"} <= graph.keys()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_checker_finds_a_cycle_hidden_under_type_checking(tmp_path: Path) -> None:
    # What server/ looked like before the seams: connection imported Node for type hints only.
    probe = tmp_path / "connection.py"
    probe.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                     "    from .node import Node\n")
    graph = {"node": {"http"}, "http": {"connection"}, "connection": imports_of(probe)}
    assert find_cycle(graph) == ["connection", "node", "http", "connection"]


def test_nothing_in_server_imports_the_node_but_its_entry_points() -> None:
    importers = {name for name, deps in import_graph().items() if "node" in deps}
    assert importers <= {"main"}, importers
