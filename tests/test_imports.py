"""Data flows one way through the packages: no package imports one that imports it back."""

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "presso"


def _package(module: str) -> str:
    """``presso.search.tracking._x`` -> ``presso.search``; top-level modules stand alone."""
    return ".".join(module.split(".")[:2])


def package_imports() -> dict[str, set[str]]:
    """``{package: packages it imports}`` over every module (lazy imports inside functions too)."""
    edges: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        here = _package(".".join(p for p in parts if p != "__init__"))
        edges.setdefault(here, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("presso."):
                targets = [node.module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("presso.")]
            else:
                continue
            edges[here].update(t for t in map(_package, targets) if t != here)
    return edges


def test_packages_form_no_import_cycle():
    edges = package_imports()
    try:
        order = list(TopologicalSorter(edges).static_order())
    except CycleError as exc:
        raise AssertionError(f"import cycle between packages: {' -> '.join(exc.args[1])}") from None
    assert order
    # The README's data flow: no package imports one that comes after it.
    flow = ["presso.plan", "presso.spaces", "presso.compress", "presso.targets", "presso.objectives", "presso.search"]
    backwards = [(a, b) for i, a in enumerate(flow) for b in flow[i + 1:] if b in edges[a]]
    assert not backwards, f"imports against the data flow (package, what it imports): {backwards}"


def test_spaces_and_plan_import_no_heavy_package():
    edges = package_imports()
    for light in ("presso.plan", "presso.spaces"):
        assert not edges[light] & {"presso.compress", "presso.targets", "presso.objectives", "presso.search"}, edges[light]
