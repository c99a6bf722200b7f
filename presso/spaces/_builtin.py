"""Built-in spaces shipped as YAML next to this module."""

from __future__ import annotations

from pathlib import Path

from presso.errors import PressoError, did_you_mean

_DIR = Path(__file__).parent / "builtin"


def builtin_spaces() -> list[str]:
    return sorted(f"builtin:{p.stem}" for p in _DIR.glob("*.yaml"))


def builtin_space_path(ref: str) -> Path:
    path = _DIR / f"{ref.removeprefix('builtin:')}.yaml"
    if not path.is_file():
        known = builtin_spaces()
        raise PressoError(f"space: unknown built-in {ref!r}{did_you_mean(ref, known)}; allowed: {known} or a YAML file")
    return path
