"""The house rules of src/tuneatlas, checked on the source itself (docs/internals.md draws them):
imports run down the layers and never in a circle, and no function is longer than a screen."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "tuneatlas"
MAX_FUNCTION_LINES = 80

# Layer of each module (longest matching prefix wins). A module may import its own layer or any
# layer below it; an import of a higher layer is an import that "runs up" and fails the test.
LAYERS = {
    "tuneatlas": 0,
    "tuneatlas.errors": 0,
    "tuneatlas.io": 0,
    "tuneatlas.spec": 0,
    "tuneatlas.catalogue": 0,
    "tuneatlas.metrics": 0,
    "tuneatlas.data": 1,
    "tuneatlas.models": 1,
    "tuneatlas.engine": 2,
    "tuneatlas.analysis": 3,
    "tuneatlas.bundles": 3,  # runs members' commands under the engine's SIGTERM guard
    "tuneatlas.studies": 4,
    "tuneatlas.report": 4,
    # the top band: config -> pure plan -> checks of the files the config names -> CLI
    "tuneatlas.config": 5,
    "tuneatlas.plan": 6,
    "tuneatlas.preflight": 7,
    "tuneatlas.estimate": 7,  # reads the plan and preflight's row counts
    "tuneatlas.tracking": 7,
    "tuneatlas.cli": 8,
    "tuneatlas.__main__": 9,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def _sources() -> dict[str, ast.Module]:
    return {_module_name(p): ast.parse(p.read_text()) for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(module: str, tree: ast.Module, known: set[str]) -> set[str]:
    """The tuneatlas modules `module` imports anywhere (top level or inside a function);
    `from tuneatlas.x import y` counts as an import of tuneatlas.x.y when that is a module."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("tuneatlas"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if not node.module.startswith("tuneatlas"):
                continue
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
    found.discard(module)
    return found


def _graph() -> dict[str, set[str]]:
    trees = _sources()
    known = set(trees)
    return {m: _imports(m, t, known) for m, t in trees.items()}


def test_no_import_runs_up_a_layer():
    upward = [
        f"{m} (layer {_layer(m)}) imports {dep} (layer {_layer(dep)})"
        for m, deps in _graph().items()
        for dep in sorted(deps)
        if _layer(dep) > _layer(m)
    ]
    assert not upward, "\n".join(upward)


def test_imports_form_no_circle():
    graph = _graph()
    # Package __init__ modules are imported implicitly by their children; a circle through one
    # is a real circle only if the __init__ itself imports something, so they stay in.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_the_layer_check_sees_an_upward_import(tmp_path):
    """The checks above would pass on an empty graph: make sure they parse real imports."""
    graph = _graph()
    assert "tuneatlas.engine.loop" in graph
    assert any(dep.startswith("tuneatlas.engine") for dep in graph["tuneatlas.cli"])
    tree = ast.parse("def f():\n    from tuneatlas.studies import registry\n")
    deps = _imports("tuneatlas.engine.x", tree, {"tuneatlas.studies.registry"})
    assert deps == {"tuneatlas.studies.registry"}
    assert _layer("tuneatlas.studies.registry") > _layer("tuneatlas.engine.x")


@pytest.mark.parametrize("root", ["src", "benchmarks"])
def test_no_function_is_longer_than_a_screen(root):
    base = SRC.parent / root
    long = []
    for path in sorted(base.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(SRC.parent)}:{node.lineno} {node.name} {lines}")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)
