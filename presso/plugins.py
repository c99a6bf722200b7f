"""Third-party plugins, found through installed packages' entry points.

A plugin package declares entry points in one of :data:`GROUPS`. Each entry point names a
module, whose import registers through the usual ``register_*`` function, or a function of no
arguments, which is called and registers. Presso loads them once per process, before a
study's config is checked (:class:`presso.search.StudyConfig` calls :func:`load_plugins`), so
``sampler:`` and ``objectives:`` in a study file may name what a plugin registered; workers
and Ray actors load the same plugins when they read the study.

Example (the plugin's ``pyproject.toml``)::

    [project.entry-points."presso.objectives"]
    param_count = "my_plugin.objectives"          # a module: importing it registers

    [project.entry-points."presso.samplers"]
    qmc = "my_plugin.samplers:register"           # a function: calling it registers
"""

from __future__ import annotations

import types
from importlib.metadata import EntryPoint, entry_points

from presso.errors import PressoError

GROUPS = ("presso.samplers", "presso.objectives", "presso.targets", "presso.quantizers")
"""The entry-point groups Presso reads, one per registry."""

_LOADED: set[tuple[str, str, str]] = set()  # (group, name, value) of every plugin loaded here
_SCANNED = False


def load_plugins() -> list[str]:
    """Import every installed plugin of :data:`GROUPS` that is not loaded yet in this process.

    Returns:
        ``"group:name"`` of the plugins loaded by this call (empty once all are loaded).

    Raises:
        PressoError: a plugin failed to import or to register; the message names its entry
            point and the error.
    """
    global _SCANNED
    if _SCANNED:
        return []
    loaded = []
    for group in GROUPS:
        for point in entry_points(group=group):
            key = (group, point.name, point.value)
            if key in _LOADED:
                continue
            _load(group, point)
            _LOADED.add(key)
            loaded.append(f"{group}:{point.name}")
    # NOTE: set only when every plugin loaded, so a fixed broken plugin is retried, not skipped.
    _SCANNED = True
    return loaded


def _load(group: str, point: EntryPoint) -> None:
    where = f"plugin entry point {point.name!r} in group {group!r} ({point.value}"
    dist = getattr(point, "dist", None)
    where += f", from {dist.name} {dist.version})" if dist is not None else ")"
    try:
        target = point.load()
        if not isinstance(target, types.ModuleType):
            if not callable(target):
                raise TypeError(f"{point.value} is a {type(target).__name__}; allowed: a module or a function")
            target()
    except Exception as exc:  # noqa: BLE001 - any failure of foreign code is reported with its origin
        raise PressoError(f"{where} failed to load: {type(exc).__name__}: {exc}") from exc
