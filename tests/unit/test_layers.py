"""The package's import graph, read from the source with `ast` (module-level and function-level imports alike, since
a call-time import is still a dependency): no cycle anywhere, and the bottom layers (data, io, distributed) import
nothing from the layers above them."""

from __future__ import annotations

import ast
from pathlib import Path

import lossguided

ROOT = Path(lossguided.__file__).parent
BOTTOM = ("lossguided.distributed", "lossguided.io", "lossguided.data")
ABOVE = (
    "lossguided.engine",
    "lossguided.stages",
    "lossguided.recipe",
    "lossguided.cli",
    "lossguided.report",
    "lossguided.ensemble",
    "lossguided.refine",
)
# Edges known to close a cycle and not yet removed, each with why and what removes it. Keep this empty.
ALLOWED_CYCLE_EDGES: set[tuple[str, str]] = set()  # none: keep it that way


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is a package)."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = ["lossguided", *path.relative_to(ROOT).with_suffix("").parts]
        package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if package else parts)] = (path, package)
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the lossguided modules it imports anywhere in its body. `from a import b` counts as importing the
    module `a.b` when there is one, else `a`; a package's `__init__` is not counted as imported by its submodules."""
    modules = _modules()

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, (path, package) in modules.items():
        here = name if package else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                deps |= {known(a.name) for a in node.names if a.name.split(".")[0] == "lossguided"}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join([*parts, *([node.module] if node.module else [])])
                if base.split(".")[0] != "lossguided":
                    continue
                deps |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else known(base) for a in node.names}
        graph[name] = deps - {None, name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search, iterative)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_the_graph_sees_function_level_and_relative_imports():
    graph = import_graph()
    assert "lossguided.data.sources" in graph["lossguided.cli"]  # imported inside the command functions
    assert "lossguided.data.manifest" in graph["lossguided.data.sources"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    graph = import_graph()
    for a, b in ALLOWED_CYCLE_EDGES:
        assert b in graph[a], f"allow-listed edge {a} -> {b} is gone: remove it from ALLOWED_CYCLE_EDGES"
        graph[a] = graph[a] - {b}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_bottom_layers_reach_nothing_above_them():
    """Transitively: a bottom module may use helpers beside it (layout, strings), but through none of them may it
    reach an upper layer (e.g. data -> layout -> engine.checkpoint would)."""
    graph = import_graph()

    def path_to_above(start: str) -> list[str] | None:
        seen, stack = {start}, [[start]]
        while stack:
            path = stack.pop()
            for d in sorted(graph.get(path[-1], ())):
                if any(d == a or d.startswith(a + ".") for a in ABOVE):
                    return [*path, d]
                if d not in seen:
                    seen.add(d)
                    stack.append([*path, d])
        return None

    bottom = [m for m in sorted(graph) if m in BOTTOM or m.startswith("lossguided.data.")]
    wrong = [" -> ".join(p) for m in bottom if (p := path_to_above(m))]
    assert not wrong, "a bottom layer reaches an upper one: " + "; ".join(wrong)
