"""Install a throwaway plugin package for a test: its modules and a ``.dist-info`` folder with
``entry_points.txt`` (what pip would leave), in a folder that goes on ``PYTHONPATH``."""

from __future__ import annotations

import textwrap


def install(root, name: str, modules: dict[str, str], entry_points: str):
    """Write a package and its ``.dist-info`` (what pip would leave) into ``root``."""
    package = root / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for module, text in modules.items():
        (package / f"{module}.py").write_text(text)
    info = root / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    return root
