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


def _top_package(parts: tuple[str, ...]) -> str:
    """``presso.search.tracking._x`` -> ``search``; ``presso/cli.py`` -> ``cli``."""
    return parts[1] if len(parts) > 1 else parts[0]


def private_imports(root: Path = ROOT) -> list[str]:
    """``file:line name`` for every import of another package's private module or name.

    A package's ``_private`` modules and ``_names`` are its own business: other packages import what
    its ``__init__`` exports. The root's private modules (``presso._files``) are shared helpers of
    every package, so they are allowed.
    """
    found = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        here = _top_package(tuple(p for p in parts if p != "__init__"))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("presso."):
                modules = [(node.module, [a.name for a in node.names])]
            elif isinstance(node, ast.Import):
                modules = [(a.name, []) for a in node.names if a.name.startswith("presso.")]
            else:
                continue
            for module, names in modules:
                inner = tuple(module.split("."))
                if len(inner) == 2 and inner[1].startswith("_") or _top_package(inner) == here:
                    continue  # the root's shared helpers (presso._files), or the importer's own package
                where = f"{path.relative_to(root.parent)}:{node.lineno}"
                if any(p.startswith("_") for p in inner[1:]):
                    found.append(f"{where} {module} ({', '.join(names) or 'module'})")
                else:
                    found += [f"{where} {module}.{n}" for n in names if n.startswith("_") and not n.startswith("__")]
    return found


def test_no_package_imports_another_packages_private_names():
    offenders = private_imports()
    assert not offenders, ("imports of another package's private module or name (export it from that package's "
                           "__init__ and import it from there):\n" + "\n".join(offenders))


def test_private_import_scan_finds_what_it_should(tmp_path):
    pkg = tmp_path / "presso"
    (pkg / "search").mkdir(parents=True)
    (pkg / "search" / "_a.py").write_text(
        "from presso.compress._size import unique_state\n"
        "import presso.targets._base\n"
        "from presso.plan import _names\n"
        "from presso.search._records import study_info\n"
        "from presso.compress import compress_\n"
        "from presso._files import replace_dir\n"
        "from presso import __version__\n")
    assert private_imports(pkg) == [
        "presso/search/_a.py:1 presso.compress._size (unique_state)",
        "presso/search/_a.py:2 presso.targets._base (module)",
        "presso/search/_a.py:3 presso.plan._names",
    ]
