"""The package's modules import one way: no cycle among them, counting imports inside functions
and under ``TYPE_CHECKING`` too (a cycle hidden there still ties two modules into one)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: folder → the package it is installed as (pyproject's package-dir)
PACKAGES = {ROOT / "onnx_gradcam": "onnx_gradcam", ROOT / "converters": "onnx_gradcam.converters"}


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` (at ``path``) imports, anywhere in its code."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = name.split(".")[: len(name.split(".")) - node.level + is_package]
                base = ".".join([*parent, *([base] if base else [])])
            submodules = {f"{base}.{a.name}" for a in node.names} & known.keys()
            out |= submodules
            if len(submodules) < len(node.names):  # names defined in ``base`` itself
                out.add(base)
    return {m for m in out if m in known and m != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_sees_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_inside_the_package() -> None:
    known = modules()
    assert "onnx_gradcam.explainer" in known and "onnx_gradcam.converters.api" in known
    graph = {name: imports(name, path, known) for name, path in known.items()}
    assert "onnx_gradcam.explainer_graph" in graph["onnx_gradcam.explainer"]  # edges are read
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_export_does_not_import_the_explainer() -> None:
    known = modules()
    assert "onnx_gradcam.explainer" not in imports(
        "onnx_gradcam.export", known["onnx_gradcam.export"], known)
