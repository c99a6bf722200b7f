"""Constraints such as ``ppl_ratio <= 1.10``: parsing and Optuna-style violations."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from presso.errors import PressoError, did_you_mean
from presso.objectives._registry import registered_objectives

CONSTRAINT_GRAMMAR = "NAME <= NUMBER or NAME >= NUMBER, e.g. 'ppl_ratio <= 1.10'"
OPS = ("<=", ">=")

_CONSTRAINT = re.compile(r"^\s*([A-Za-z_]\w*)\s*(<=|>=|==|=<|=>|<|>|=|!=)\s*(\S+?)\s*$")


@dataclass(frozen=True)
class Constraint:
    """A bound on one objective: ``name op bound``.

    Args:
        name: the objective's registered name.
        op: ``"<="`` or ``">="``.
        bound: a finite number.
    """

    name: str
    op: str
    bound: float

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise PressoError(f"constraint.name: got {self.name!r}; allowed: an objective name such as 'ppl_ratio'")
        if self.op not in OPS:
            raise PressoError(f"constraint.op: got {self.op!r}; allowed: <=, >=")
        if isinstance(self.bound, bool) or not isinstance(self.bound, (int, float)) or not math.isfinite(self.bound):
            raise PressoError(f"constraint.bound: got {self.bound!r}; allowed: a finite number")
        object.__setattr__(self, "bound", float(self.bound))

    def __str__(self) -> str:
        return f"{self.name} {self.op} {self.bound!r}"

    def value_of(self, values: Mapping[str, float]) -> float:
        """The constrained objective's value in ``values``; a ``PressoError`` when absent."""
        try:
            return float(values[self.name])
        except KeyError:
            raise PressoError(
                f"constraint '{self}': no value for {self.name!r}; values given: {', '.join(values) or '(none)'}"
            ) from None

    def violation(self, values: Mapping[str, float]) -> float:
        """How far ``values`` are from satisfying this constraint (Optuna's convention).

        Returns:
            ``value - bound`` for ``<=``, ``bound - value`` for ``>=``: ``<= 0`` means
            satisfied. A NaN value gives ``inf``.
        """
        value = self.value_of(values)
        if math.isnan(value):
            return math.inf
        return value - self.bound if self.op == "<=" else self.bound - value

    def satisfied(self, values: Mapping[str, float]) -> bool:
        """``True`` when ``violation(values) <= 0``."""
        return self.violation(values) <= 0.0


def parse_constraint(text: str, known: Iterable[str] | None = None) -> Constraint:
    """Parse ``"NAME <= NUMBER"`` or ``"NAME >= NUMBER"``.

    Args:
        text: the constraint, e.g. ``"size_fraction<=0.25"``; spaces are optional.
        known: the allowed names; ``None`` means all registered objectives.

    Returns:
        The :class:`Constraint`.

    Raises:
        PressoError: the text does not follow the grammar, uses ``<``/``>``/``=``, the
            number is not finite, or the name is unknown (the message lists known names).

    Example::

        >>> parse_constraint("ppl_ratio <= 1.10")
        Constraint(name='ppl_ratio', op='<=', bound=1.1)
    """
    constraint = parse_constraint_syntax(text)
    check_name(constraint.name, known, f"constraint {text!r}")
    return constraint


def parse_constraint_syntax(text: str) -> Constraint:
    """Parse a constraint without checking that its name is a known objective."""
    if not isinstance(text, str):
        raise PressoError(f"constraint: got {text!r}; allowed: {CONSTRAINT_GRAMMAR}")
    match = _CONSTRAINT.match(text)
    if not match:
        raise PressoError(f"constraint: got {text!r}; allowed: {CONSTRAINT_GRAMMAR}")
    name, op, number = match.groups()
    if op not in OPS:
        raise PressoError(f"constraint {text!r}: operator {op!r} is not allowed; use <= or >= ({CONSTRAINT_GRAMMAR})")
    try:
        bound = float(number)
    except ValueError:
        raise PressoError(f"constraint {text!r}: {number!r} is not a number; allowed: {CONSTRAINT_GRAMMAR}") from None
    if not math.isfinite(bound):
        raise PressoError(f"constraint {text!r}: bound {number!r} is not finite; allowed: a finite number")
    return Constraint(name, op, bound)


def check_name(name: str, known: Iterable[str] | None, where: str) -> None:
    """Raise when ``name`` is not in ``known`` (default: the registered objectives)."""
    known = registered_objectives() if known is None else list(known)
    if name not in known:
        raise PressoError(
            f"{where}: unknown objective {name!r}{did_you_mean(name, known)}; known objectives: {', '.join(known)}"
        )


def check_constraints(constraints: Iterable[Constraint], objective_names: Iterable[str]) -> None:
    """Raise when a constraint bounds an objective the study does not compute.

    Args:
        constraints: parsed constraints.
        objective_names: the names of the objectives the study measures.

    Raises:
        PressoError: names the constraint and lists the study's objectives.
    """
    names = list(objective_names)
    for constraint in constraints:
        if constraint.name not in names:
            raise PressoError(
                f"constraint '{constraint}': the study does not compute {constraint.name!r}"
                f"{did_you_mean(constraint.name, names)}; add it to the objectives or drop the constraint "
                f"(study objectives: {', '.join(names) or '(none)'})"
            )


def constraint_values(constraints: Iterable[Constraint], values: Mapping[str, float]) -> list[float]:
    """Violations of each constraint, in order: what ``trial.set_constraint`` / Optuna's
    ``constraints_func`` expect (feasible when every entry is ``<= 0``)."""
    return [constraint.violation(values) for constraint in constraints]


def total_violation(constraints: Iterable[Constraint], values: Mapping[str, float]) -> float:
    """The sum of positive violations (0.0 when every constraint holds)."""
    return sum(max(0.0, constraint.violation(values)) for constraint in constraints)
