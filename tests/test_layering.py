"""The package's shape stays: imports only point down the pipeline, and there are no import cycles.

Every ``import`` in every module of ``interp`` (at any depth, lazy ones included) is read with ``ast``.
Run as a script to print the import graph's figures: ``python tests/test_layering.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "interp"

# Lower numbers are lower layers; a module may import its own layer or any lower one.
LAYERS = {
    "interp.errors": 0,
    "interp.io": 0,
    "interp.distributed": 0,
    "interp.data": 0,
    "interp.core": 1,
    "interp.measures": 2,
    "interp.training": 3,
    "interp.evaluation": 3,
    "interp.report": 4,
    "interp.organism": 5,
    "interp.analyze": 6,
    "interp.study_plans": 7,
    "interp.study_training": 7,
    "interp.study": 7,
    "interp.default_run": 7,
    "interp.plan": 7,
    "interp.protocol": 7,
    "interp.redraw": 7,
    "interp.cli": 8,
    "interp.config_file": 8,
    "interp": 9,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    while module not in LAYERS:
        module = module.rsplit(".", 1)[0]
    return LAYERS[module]


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package modules that ``path`` imports (relative imports resolved)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # ``from pkg import mod`` imports the module ``pkg.mod``; ``from pkg import name`` imports ``pkg``
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rsplit(".", 1)[0] if "." in name else ""
            if name and name != me:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports_of(p, modules) for p in paths}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return out


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted(
        (a, b) for a, targets in graph.items() for b in targets if a != "interp" and layer_of(b) > layer_of(a)
    )


def levels(graph: dict[str, set[str]]) -> int:
    """The longest import chain, counted in modules (1 = imports nothing of the package), below the
    entry points (the package's ``__init__``, which re-exports the API, and ``__main__``)."""
    graph = {k: {t for t in v if t != "interp"} for k, v in graph.items() if k not in ("interp", "interp.__main__")}
    depth: dict[str, int] = {}

    def level(node: str) -> int:
        if node not in depth:
            depth[node] = 0
            depth[node] = 1 + max((level(n) for n in graph[node]), default=0)
        return depth[node]

    return max(level(node) for node in graph)


def test_the_package_has_no_import_cycles():
    assert cycles(import_graph()) == []


def test_every_import_points_down_the_pipeline():
    assert upward_imports(import_graph()) == []


def test_every_module_has_a_layer():
    graph = import_graph()
    for module in graph:
        layer_of(module)  # raises KeyError for a module outside LAYERS
    assert len(graph) > 20


def test_the_checker_sees_a_planted_cycle_and_an_upward_import():
    graph = {"interp.core.a": {"interp.measures.b"}, "interp.measures.b": {"interp.core.a"}}
    assert cycles(graph) == [["interp.core.a", "interp.measures.b"]]
    assert upward_imports(graph) == [("interp.core.a", "interp.measures.b")]


if __name__ == "__main__":
    graph = import_graph()
    print(
        f"modules {len(graph)}, import edges {sum(map(len, graph.values()))}, levels {levels(graph)}, "
        f"cycles {len(cycles(graph))}, upward imports {len(upward_imports(graph))}"
    )
    for a, b in upward_imports(graph):
        print(f"  upward: {a} -> {b}")
    for cycle in cycles(graph):
        print(f"  cycle: {' -> '.join(cycle)}")


def test_the_public_names_are_what_they_say_after_every_module_is_imported():
    """``interp.NAME`` loads lazily; importing a submodule named like a public function (``interp.analyze``,
    ``interp.restore``) must leave the function in place; the API stays small (at most 30 names)."""
    import importlib
    import inspect

    import interp

    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        if not name.endswith("__main__"):
            importlib.import_module(name)
    for name in interp.__all__:
        value = getattr(interp, name)
        assert inspect.ismodule(value) == (name in interp.MODULES), name
    assert callable(interp.analyze) and callable(interp.restore) and len(interp.__all__) <= 30
