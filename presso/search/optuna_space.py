"""The one place where a Presso space becomes Optuna suggestions (define-by-run)."""

from __future__ import annotations

from presso.errors import PressoError
from presso.plan import Plan
from presso.spaces import BoundSpace, Choice, Domain, FloatRange, IntRange


def suggest_value(trial, name: str, domain: Domain):
    """Ask ``trial`` for one value of ``domain`` under the stable parameter ``name``."""
    if isinstance(domain, FloatRange):
        return trial.suggest_float(name, domain.low, domain.high, step=domain.step, log=domain.log)
    if isinstance(domain, IntRange):
        return trial.suggest_int(name, domain.low, domain.high, step=domain.step, log=domain.log)
    if isinstance(domain, Choice):
        return trial.suggest_categorical(name, list(domain.values))
    raise PressoError(f"space: domain {type(domain).__name__} for {name!r} has no Optuna counterpart for {type(trial).__name__}")


def suggest(trial, bound: BoundSpace, model: str | None = None) -> Plan:
    """Sample a plan from ``bound`` through ``trial``; conditional choices stay conditional."""
    return bound.sample(lambda name, domain: suggest_value(trial, name, domain), model=model)
