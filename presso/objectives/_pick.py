"""Pick rules for ``presso export --pick``: ``(min|max) NAME [where COND (and COND)*]``."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from presso.errors import PressoError
from presso.objectives._constraints import Constraint, check_name, parse_constraint_syntax, total_violation

PICK_GRAMMAR = "(min|max) NAME [where NAME (<=|>=) NUMBER (and ...)*], e.g. 'min size_bytes where ppl_ratio <= 1.10'"
SENSES = ("min", "max")

_RULE = re.compile(r"^\s*(\w+)\s+([A-Za-z_]\w*)\s*(?:\s(where)\s+(.*?))?\s*$", re.IGNORECASE | re.DOTALL)
_AND = re.compile(r"\s+and\s+", re.IGNORECASE)

Row = tuple[int, Mapping[str, float]]


def _bad(text: Any, why: str = "") -> PressoError:
    reason = f" ({why})" if why else ""
    return PressoError(f"pick rule: got {text!r}{reason}; grammar: {PICK_GRAMMAR}")


@dataclass(frozen=True)
class PickRule:
    """Which trial to export: the best ``name`` among trials meeting every ``where`` constraint.

    Args:
        sense: ``"min"`` or ``"max"``.
        name: the objective to optimise.
        where: constraints a trial must satisfy.
    """

    sense: str
    name: str
    where: tuple[Constraint, ...] = ()

    def __post_init__(self):
        if self.sense not in SENSES:
            raise PressoError(f"pick rule sense: got {self.sense!r}; allowed: min, max")
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise PressoError(f"pick rule name: got {self.name!r}; allowed: an objective name such as 'size_bytes'")
        object.__setattr__(self, "where", tuple(self.where))
        for constraint in self.where:
            if not isinstance(constraint, Constraint):
                raise PressoError(f"pick rule where: got {constraint!r}; allowed: Constraint objects")

    def __str__(self) -> str:
        text = f"{self.sense} {self.name}"
        if self.where:
            text += " where " + " and ".join(str(c) for c in self.where)
        return text

    def choose(self, rows: Iterable[Row]) -> Row:
        """Choose a trial.

        Args:
            rows: ``(trial_number, {objective_name: value})`` for each finished trial.

        Returns:
            The row (as given) that satisfies every constraint with the best value of
            ``name``; ties go to the lowest trial number. Rows whose ``name`` value is NaN or
            infinite are never chosen.

        Raises:
            PressoError: no rows; a row lacks a needed value; or no row satisfies the rule,
                in which case the message lists the 3 closest rows (smallest total violation)
                with their values.

        Example::

            >>> rule = parse_pick_rule("min size_bytes where ppl_ratio <= 1.10")
            >>> rule.choose([(0, {"size_bytes": 9e6, "ppl_ratio": 1.02}),
            ...              (1, {"size_bytes": 4e6, "ppl_ratio": 1.31})])[0]
            0
        """
        rows = list(rows)
        if not rows:
            raise PressoError(f"pick rule '{self}': there are no finished trials to pick from")
        needed = [self.name] + [c.name for c in self.where]
        for number, values in rows:
            for name in needed:
                if name not in values:
                    raise PressoError(
                        f"pick rule '{self}': trial {number} has no value for {name!r}; "
                        f"the study's values: {', '.join(values) or '(none)'}"
                    )
        sign = 1.0 if self.sense == "min" else -1.0
        eligible = [
            row
            for row in rows
            if math.isfinite(float(row[1][self.name])) and all(c.satisfied(row[1]) for c in self.where)
        ]
        if eligible:
            return min(eligible, key=lambda row: (sign * float(row[1][self.name]), row[0]))

        def badness(row: Row) -> tuple[float, int]:
            own = 0.0 if math.isfinite(float(row[1][self.name])) else math.inf
            return (total_violation(self.where, row[1]) + own, row[0])

        closest = sorted(rows, key=badness)[:3]
        shown = "; ".join(
            f"trial {number} ({', '.join(f'{name}={_fmt(values[name])}' for name in dict.fromkeys(needed))})"
            for number, values in closest
        )
        conditions = " and ".join(str(c) for c in self.where) or f"a finite {self.name}"
        raise PressoError(
            f"pick rule '{self}': none of {len(rows)} trials satisfies {conditions}; closest: {shown}"
        )


def _fmt(value: Any) -> str:
    return f"{float(value):.6g}"


def parse_pick_rule(text: str, known: Sequence[str] | None = None) -> PickRule:
    """Parse a pick rule.

    Args:
        text: e.g. ``"min size_bytes where ppl_ratio <= 1.10 and latency_ms <= 20"``.
            Keywords (``min``, ``max``, ``where``, ``and``) are case-insensitive.
        known: allowed objective names; ``None`` means all registered objectives.

    Returns:
        The :class:`PickRule`; ``str(rule)`` gives a canonical text that parses back to it.

    Raises:
        PressoError: one line stating the grammar with an example, or naming the unknown
            objective and listing the known ones.
    """
    if not isinstance(text, str):
        raise _bad(text)
    match = _RULE.match(text)
    if not match:
        raise _bad(text)
    sense, name, where, conditions = match.groups()
    if sense.lower() not in SENSES:
        raise _bad(text, f"it must start with min or max, not {sense!r}")
    check_name(name, known, f"pick rule {text!r}")
    constraints = []
    if where is not None:
        if not conditions:
            raise _bad(text, "'where' needs at least one condition")
        for part in _AND.split(conditions):
            try:
                constraint = parse_constraint_syntax(part)
            except PressoError:
                raise _bad(text, f"bad condition {part.strip()!r}") from None
            check_name(constraint.name, known, f"pick rule {text!r}")
            constraints.append(constraint)
    return PickRule(sense.lower(), name, tuple(constraints))
