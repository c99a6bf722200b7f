"""The objective registry: a dict plus a decorator. The registry is the allowlist of names."""

from __future__ import annotations

from typing import Any, TypeVar

from presso.errors import PressoError, did_you_mean
from presso.objectives._base import BaseObjective, Direction, Task

_REGISTRY: dict[str, type[BaseObjective]] = {}

T = TypeVar("T", bound=type[BaseObjective])


def register_objective(cls: T) -> T:
    """Class decorator: add a ``BaseObjective`` subclass to the registry under ``cls.name``.

    Example::

        @register_objective
        class ParamCountObjective(BaseObjective):
            name = "param_count"
            direction = Direction.MINIMIZE
            unit = "params"

            def compute(self, model, ctx, trial):
                return sum(p.numel() for p in model.parameters())

    Raises:
        PressoError: the name is taken, or the class attributes are missing or invalid.
    """
    if not (isinstance(cls, type) and issubclass(cls, BaseObjective)):
        raise PressoError(f"register_objective: got {cls!r}; allowed: a subclass of BaseObjective")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name.isidentifier():
        raise PressoError(
            f"register_objective: {cls.__name__}.name is {name!r}; allowed: an identifier such as 'ppl_ratio'"
        )
    if name in _REGISTRY:
        raise PressoError(
            f"register_objective: objective {name!r} is already registered by {_REGISTRY[name].__qualname__}; "
            "choose another name"
        )
    if not isinstance(getattr(cls, "direction", None), Direction):
        raise PressoError(
            f"register_objective: {cls.__name__}.direction is {getattr(cls, 'direction', None)!r}; "
            "allowed: Direction.MINIMIZE or Direction.MAXIMIZE"
        )
    if not isinstance(getattr(cls, "unit", None), str):
        raise PressoError(f"register_objective: {cls.__name__}.unit must be a string")
    tasks = getattr(cls, "tasks", ())
    if not tasks or not all(isinstance(t, Task) for t in tasks):
        raise PressoError(f"register_objective: {cls.__name__}.tasks is {tasks!r}; allowed: a non-empty tuple of Task")
    _REGISTRY[name] = cls
    return cls


def unregister_objective(name: str) -> None:
    """Remove ``name`` from the registry (for tests and plugin reloads)."""
    objective_class(name)
    del _REGISTRY[name]


def registered_objectives() -> list[str]:
    """The registered objective names, sorted."""
    return sorted(_REGISTRY)


def objective_class(name: str) -> type[BaseObjective]:
    """Look up a registered class by name.

    Raises:
        PressoError: unknown name; the message lists the registered names.
    """
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        known = registered_objectives()
        raise PressoError(
            f"objective: got {name!r}{did_you_mean(str(name), known)}; registered objectives: {', '.join(known)}"
        ) from None


def get_objective(name: str, **options: Any) -> BaseObjective:
    """Build the objective registered as ``name``.

    Args:
        name: a registered name, e.g. ``"ppl_ratio"``.
        **options: keyword arguments of that objective's constructor
            (e.g. ``top_k=128`` for ``kl_divergence``).

    Returns:
        A fresh objective instance.

    Raises:
        PressoError: unknown name or unknown option.

    Example::

        >>> get_objective("size_fraction").direction.value
        'minimize'
    """
    cls = objective_class(name)
    try:
        return cls(**options)
    except TypeError as exc:
        raise PressoError(f"objective {name!r}: bad options {options!r} ({exc})") from None


def objective_directions(objectives: list[BaseObjective]) -> list[str]:
    """The Optuna ``directions`` list for ``objectives``, e.g. ``["minimize", "maximize"]``."""
    return [objective.direction.value for objective in objectives]
