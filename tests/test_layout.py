"""The README's Layout section names every module of the package, and nothing that is gone."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_layout_lists_exactly_the_modules():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Layout\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```", 2)[1]
    listed = {m.group(1) for m in re.finditer(r"^(presso/\S+\.py)\s", block, re.M)}
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "presso").rglob("*.py") if p.name != "__init__.py"}
    assert sorted(modules - listed) == [], "modules missing from the README's Layout"
    assert sorted(listed - modules) == [], "the README's Layout lists modules that do not exist"
