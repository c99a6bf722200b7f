"""Pareto maths in pure Python: dominance, the non-dominated front and exact hypervolume."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from presso.errors import PressoError
from presso.objectives._base import Direction, parse_direction

R = TypeVar("R")


def _signs(directions: Iterable[Any]) -> list[float]:
    """+1 for minimize, -1 for maximize, so every objective can be treated as minimized.

    Accepts ``"minimize"``/``"maximize"``, :class:`Direction`, or any enum whose ``name`` is
    ``MINIMIZE``/``MAXIMIZE`` (such as Optuna's ``StudyDirection``) without importing it.
    """
    signs = []
    for i, direction in enumerate(directions):
        name = getattr(direction, "name", None)
        if not isinstance(direction, (str, Direction)) and name in ("MINIMIZE", "MAXIMIZE"):
            direction = name.lower()
        parsed = parse_direction(direction, f"directions[{i}]")
        signs.append(1.0 if parsed is Direction.MINIMIZE else -1.0)
    if not signs:
        raise PressoError("directions: got an empty list; allowed: one 'minimize'/'maximize' per objective")
    return signs


def _as_minimized(point: Sequence[float], signs: list[float], where: str) -> tuple[float, ...]:
    if len(point) != len(signs):
        raise PressoError(
            f"{where}: got {len(point)} values {list(point)!r}; expected {len(signs)} (one per direction)"
        )
    return tuple(s * float(v) for s, v in zip(signs, point))


def _dominates_min(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a`` dominates ``b`` when all objectives are minimized."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[Any]) -> bool:
    """Whether ``a`` is at least as good as ``b`` in every objective and better in one.

    Args:
        a: one value per objective.
        b: one value per objective.
        directions: ``"minimize"`` or ``"maximize"`` per objective.
    """
    signs = _signs(directions)
    return _dominates_min(_as_minimized(a, signs, "a"), _as_minimized(b, signs, "b"))


def pareto_front(
    rows: Iterable[R], directions: Sequence[Any], key: Callable[[R], Sequence[float]] | None = None
) -> list[R]:
    """The rows no other row dominates, in input order.

    Rows with equal values do not dominate each other, so duplicates on the front are all
    kept. Rows with a NaN value are never on the front (and do not dominate anything).

    Args:
        rows: the candidates; each row is a value vector unless ``key`` says otherwise.
        directions: ``"minimize"`` or ``"maximize"`` per objective.
        key: maps a row to its value vector, e.g.
            ``lambda row: [row[1][n] for n in names]`` for ``(number, values)`` rows.

    Returns:
        The non-dominated rows (the same objects that were passed in).

    Example::

        >>> pareto_front([(1, 5), (2, 2), (3, 3)], ["minimize", "minimize"])
        [(1, 5), (2, 2)]
    """
    signs = _signs(directions)
    rows = list(rows)
    key = key or (lambda row: row)
    points = []
    for i, row in enumerate(rows):
        point = _as_minimized(key(row), signs, f"rows[{i}]")
        if not any(math.isnan(v) for v in point):
            points.append((point, i))
    # NOTE: after a lexicographic sort a row can only be dominated by an earlier one, and if it
    # is dominated at all then some front row dominates it (dominance is transitive). So each
    # row is compared with the front found so far: O(n * front * d) rather than O(n^2 * d).
    points.sort()
    front: list[tuple[tuple[float, ...], int]] = []
    for point, i in points:
        if not any(_dominates_min(other, point) for other, _ in front):
            front.append((point, i))
    return [rows[i] for i in sorted(i for _, i in front)]


def _front_min(points: list[tuple[float, ...]]) -> list[tuple[float, ...]]:
    points = sorted(set(points))
    front: list[tuple[float, ...]] = []
    for point in points:
        if not any(_dominates_min(other, point) for other in front):
            front.append(point)
    return front


def _hv_min(points: list[tuple[float, ...]], reference: tuple[float, ...]) -> float:
    """Exact hypervolume of minimized ``points``, each strictly better than ``reference``."""
    if not points:
        return 0.0
    d = len(reference)
    if d == 1:
        return reference[0] - min(p[0] for p in points)
    if d == 2:
        volume, best_y = 0.0, reference[1]
        for x, y in sorted(points):
            if y < best_y:
                volume += (reference[0] - x) * (best_y - y)
                best_y = y
        return volume
    # NOTE: slice along the last objective (HSO): between consecutive last-coordinate values the
    # dominated region is the (d-1)-dimensional hypervolume of the points already passed.
    points = sorted(points, key=lambda p: p[-1])
    volume, active = 0.0, []
    for i, point in enumerate(points):
        active = _front_min(active + [point[:-1]])
        upper = points[i + 1][-1] if i + 1 < len(points) else reference[-1]
        if upper > point[-1]:
            volume += _hv_min(active, reference[:-1]) * (upper - point[-1])
    return volume


def hypervolume(points: Iterable[Sequence[float]], reference: Sequence[float], directions: Sequence[Any]) -> float:
    """Exact hypervolume dominated by ``points`` and bounded by ``reference``.

    Exact in any dimension: a sweep in 2-D, slicing along the last objective above that
    (``O(n^(d-1) log n)``, fine for study-sized fronts of a few hundred points in 3-D).
    Points not strictly better than ``reference`` in every objective add nothing.

    Args:
        points: one value vector per point.
        reference: the bounding point, e.g. the worst acceptable value of each objective.
        directions: ``"minimize"`` or ``"maximize"`` per objective.

    Returns:
        The volume (0.0 when no point beats the reference).

    Raises:
        PressoError: lengths differ or a value is not finite.

    Example::

        >>> hypervolume([(1, 2), (2, 1)], reference=(3, 3), directions=["minimize", "minimize"])
        3.0
    """
    signs = _signs(directions)
    ref = _as_minimized(reference, signs, "reference")
    if not all(math.isfinite(v) for v in ref):
        raise PressoError(f"hypervolume reference: got {list(reference)!r}; allowed: finite numbers")
    kept = []
    for i, point in enumerate(points):
        p = _as_minimized(point, signs, f"points[{i}]")
        if not all(math.isfinite(v) for v in p):
            raise PressoError(f"hypervolume points[{i}]: got {list(point)!r}; allowed: finite numbers")
        if all(x < r for x, r in zip(p, ref)):
            kept.append(p)
    return float(_hv_min(_front_min(kept), ref))
