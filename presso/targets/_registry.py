"""The one registry of deployment targets; third-party targets register here too."""

from __future__ import annotations

from collections.abc import Callable

from presso.errors import PressoError
from presso.targets._base import Target

_FACTORIES: dict[str, Callable[[], Target]] = {}


def register_target(name: str, factory: Callable[[], Target]) -> None:
    """Register ``factory`` (called with no arguments) under ``name``; a name registers once."""
    if name in _FACTORIES:
        raise ValueError(f"target {name!r} is already registered")
    _FACTORIES[name] = factory


def target_names() -> list[str]:
    return sorted(_FACTORIES)


def get_target(name: str) -> Target:
    """The target registered as ``name``; a clear error lists the registered ones."""
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise PressoError(f"target: got {name!r}; allowed: {target_names()}") from None
    return factory()
