"""Reading the user's YAML and JSON files: one place, ``safe_load`` only, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from presso.errors import PressoError


def read_data_file(path: Path, what: str):
    """Parse ``path`` (JSON for ``.json``, YAML otherwise) into plain data.

    Raises:
        PressoError: the file is missing or does not parse; ``what`` names it ("study file").
    """
    if not path.is_file():
        raise PressoError(f"{what}: {str(path)!r} does not exist or is not a file")
    text = path.read_text(encoding="utf-8")
    is_json = path.suffix == ".json"
    try:
        return json.loads(text) if is_json else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise PressoError(f"{what} {str(path)!r}: not valid {'JSON' if is_json else 'YAML'}: {' '.join(str(exc).split())}") from None


def replace_dir(tmp, out) -> None:
    """Move the finished folder ``tmp`` to ``out``, replacing an existing ``out`` with two renames
    (a reader sees the old folder or the new one, never a half-written one)."""
    import os
    import shutil
    import uuid
    from pathlib import Path

    out = Path(out)
    if out.exists():
        trash = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, trash)
        os.replace(tmp, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, out)
