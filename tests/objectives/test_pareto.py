"""Pareto front and exact hypervolume on synthetic points with known answers."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from presso.errors import PressoError
from presso.objectives import Direction, dominates, hypervolume, pareto_front

MIN2 = ["minimize", "minimize"]


def test_dominates_respects_directions():
    assert dominates((1, 5), (2, 5), MIN2)
    assert not dominates((1, 5), (1, 5), MIN2)
    assert not dominates((1, 6), (2, 5), MIN2)
    assert dominates((1, 6), (2, 5), ["minimize", "maximize"])
    assert dominates((3,), (2,), [Direction.MAXIMIZE])


def test_front_known_answer():
    points = [(1, 5), (2, 2), (3, 3), (5, 1), (2, 2), (4, 1), (6, 6)]
    assert pareto_front(points, MIN2) == [(1, 5), (2, 2), (2, 2), (4, 1)]


def test_front_with_maximize_and_key():
    # minimize size, maximize cosine
    rows = [(0, {"size": 10, "cos": 0.99}), (1, {"size": 5, "cos": 0.95}), (2, {"size": 6, "cos": 0.94}),
            (3, {"size": 12, "cos": 0.99}), (4, {"size": 2, "cos": 0.50})]
    front = pareto_front(rows, ["minimize", "maximize"], key=lambda r: (r[1]["size"], r[1]["cos"]))
    assert [r[0] for r in front] == [0, 1, 4]


def test_front_skips_nan_and_accepts_optuna_directions():
    import optuna

    points = [(math.nan, 0.0), (1.0, 1.0), (2.0, 0.5)]
    directions = [optuna.study.StudyDirection.MINIMIZE, optuna.study.StudyDirection.MAXIMIZE]
    assert pareto_front(points, directions) == [(1.0, 1.0)]


def test_front_errors():
    with pytest.raises(PressoError, match=r"rows\[1\]: got 3 values"):
        pareto_front([(1, 2), (1, 2, 3)], MIN2)
    with pytest.raises(PressoError, match=r"directions\[1\]: got 'up'; allowed: minimize, maximize"):
        pareto_front([(1, 2)], ["minimize", "up"])
    with pytest.raises(PressoError, match="empty"):
        pareto_front([], [])
    assert pareto_front([], MIN2) == []


@pytest.mark.parametrize(
    "points, reference, directions, expected",
    [
        ([(1, 2), (2, 1)], (3, 3), MIN2, 3.0),
        ([(1, 1)], (3, 3), MIN2, 4.0),
        ([(0, 0), (1, 1)], (1, 1), MIN2, 1.0),  # the second point sits on the reference: adds nothing
        ([(4, 4)], (3, 3), MIN2, 0.0),
        ([(1, 2), (2, 1), (1.5, 1.5), (3, 3)], (3, 3), MIN2, 3.25),
        ([(1, 3), (2, 2), (3, 1)], (4, 4), MIN2, 6.0),
        ([(0.2, 0.9), (0.5, 0.95)], (1.0, 0.0), ["minimize", "maximize"], 0.8 * 0.9 + 0.5 * 0.05),
        ([(1, 1, 1)], (2, 2, 2), ["minimize"] * 3, 1.0),
        # the cube [0,2]^3 minus the corner [0,1)^3 that none of the three slabs covers
        ([(0, 0, 1), (0, 1, 0), (1, 0, 0)], (2, 2, 2), ["minimize"] * 3, 8.0 - 1.0),
        # boxes 3x2x1 and 1x2x3 overlapping in 1x2x1
        ([(1, 2, 3), (3, 2, 1)], (4, 4, 4), ["minimize"] * 3, 6.0 + 6.0 - 2.0),
        # boxes 2^4 and 3x1x1x1 overlapping in 2x1x1x1
        ([(1, 1, 1, 1), (0, 2, 2, 2)], (3, 3, 3, 3), ["minimize"] * 4, 16.0 + 3.0 - 2.0),
        # maximize both: boxes 2x3 and 3x1 above the origin, overlapping in 2x1
        ([(2, 3), (3, 1)], (0, 0), ["maximize", "maximize"], 6.0 + 3.0 - 2.0),
        ([(2,), (1,)], (3,), ["minimize"], 2.0),
    ],
)
def test_hypervolume_known(points, reference, directions, expected):
    assert hypervolume(points, reference, directions) == pytest.approx(_brute(points, reference, directions))
    assert hypervolume(points, reference, directions) == pytest.approx(expected)


def test_hypervolume_errors():
    with pytest.raises(PressoError, match="finite"):
        hypervolume([(math.nan, 1)], (2, 2), MIN2)
    with pytest.raises(PressoError, match="reference"):
        hypervolume([(1, 1)], (math.inf, 2), MIN2)
    with pytest.raises(PressoError, match="expected 2"):
        hypervolume([(1, 1)], (2, 2, 2), MIN2)
    assert hypervolume([], (1, 1), MIN2) == 0.0


def _brute(points, reference, directions):
    """Inclusion-exclusion over subsets: exact, exponential, fine for <= 8 points."""
    signs = [1 if d in ("minimize", Direction.MINIMIZE) else -1 for d in directions]
    pts = [[s * v for s, v in zip(signs, p)] for p in points]
    ref = [s * v for s, v in zip(signs, reference)]
    pts = [p for p in pts if all(x < r for x, r in zip(p, ref))]
    total = 0.0
    for k in range(1, len(pts) + 1):
        for subset in itertools.combinations(pts, k):
            corner = [max(c) for c in zip(*subset)]
            total += (-1) ** (k + 1) * math.prod(r - c for r, c in zip(ref, corner))
    return total


# -- property tests -----------------------------------------------------------------------

coords = st.integers(-20, 20).map(float) | st.floats(-10, 10, allow_nan=False)
dirs = st.lists(st.sampled_from(["minimize", "maximize"]), min_size=1, max_size=4)


@st.composite
def point_sets(draw, max_size=25):
    directions = draw(dirs)
    d = len(directions)
    points = draw(st.lists(st.tuples(*[coords] * d), max_size=max_size))
    return points, directions


@given(point_sets())
def test_front_points_are_not_dominated_and_the_rest_are(data):
    points, directions = data
    front = pareto_front(points, directions)
    for p in front:
        assert not any(dominates(q, p, directions) for q in points)
    indices = {id(p) for p in front}
    for p in points:
        if id(p) not in indices:
            assert any(dominates(f, p, directions) for f in front)
    # every point equal to a front point is on the front too (duplicates are kept)
    assert sorted(front) == sorted(p for p in points if p in front)


@settings(max_examples=60, deadline=None)
@given(point_sets(max_size=7))
def test_hypervolume_matches_inclusion_exclusion(data):
    points, directions = data
    reference = tuple(12.0 if d == "minimize" else -12.0 for d in directions)
    assert hypervolume(points, reference, directions) == pytest.approx(
        _brute(points, reference, directions), rel=1e-9, abs=1e-9
    )


@settings(max_examples=40, deadline=None)
@given(point_sets(max_size=30))
def test_hypervolume_matches_optuna_and_ignores_dominated_points(data):
    import numpy as np

    from optuna._hypervolume import compute_hypervolume

    points, directions = data
    reference = tuple(12.0 if d == "minimize" else -12.0 for d in directions)
    signs = np.array([1.0 if d == "minimize" else -1.0 for d in directions])
    ours = hypervolume(points, reference, directions)
    inside = [p for p in points if all(x <= r for x, r in zip(np.array(p) * signs, np.array(reference) * signs))]
    if inside:  # Optuna requires every point to weakly dominate the reference
        theirs = compute_hypervolume(np.array(inside) * signs, np.array(reference) * signs)
        assert ours == pytest.approx(theirs, rel=1e-9, abs=1e-9)
    assert ours == pytest.approx(hypervolume(pareto_front(points, directions), reference, directions))
