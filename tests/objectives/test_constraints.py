"""Constraint parsing, violations and the study check."""

from __future__ import annotations

import math

import pytest

from presso.errors import PressoError
from presso.objectives import (
    Constraint,
    check_constraints,
    constraint_values,
    parse_constraint,
    total_violation,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("ppl_ratio <= 1.10", Constraint("ppl_ratio", "<=", 1.1)),
        ("size_fraction<=0.25", Constraint("size_fraction", "<=", 0.25)),
        ("embedding_cosine >= 0.99", Constraint("embedding_cosine", ">=", 0.99)),
        ("  size_bytes <= 5e7 ", Constraint("size_bytes", "<=", 5e7)),
        ("accuracy>=-1", Constraint("accuracy", ">=", -1.0)),
    ],
)
def test_parse(text, expected):
    assert parse_constraint(text) == expected
    assert parse_constraint(str(expected)) == expected


@pytest.mark.parametrize(
    "text, match",
    [
        ("ppl_ratio", r"constraint: got 'ppl_ratio'; allowed: NAME <= NUMBER or NAME >= NUMBER, e\.g\. 'ppl_ratio <= 1\.10'"),
        ("ppl_ratio < 1.1", "operator '<' is not allowed; use <= or >="),
        ("ppl_ratio == 1.1", "operator '==' is not allowed"),
        ("ppl_ratio <= 1.1 and size_bytes <= 3", "allowed: NAME <= NUMBER"),
        ("ppl_ratio <= one", "'one' is not a number"),
        ("ppl_ratio <= inf", "not finite"),
        ("ppl_ratio <= nan", "not finite"),
        ("1.1 >= ppl_ratio", "allowed: NAME <= NUMBER"),
        ("", "allowed: NAME <= NUMBER"),
        ("pplratio <= 1.1", r"unknown objective 'pplratio' \(did you mean 'ppl_ratio'\?\); known objectives: accuracy, accuracy_drop,"),
    ],
)
def test_parse_errors(text, match):
    with pytest.raises(PressoError, match=match) as info:
        parse_constraint(text)
    assert "\n" not in str(info.value)


def test_parse_with_known_names():
    assert parse_constraint("my_metric >= 3", known=["my_metric"]).name == "my_metric"
    with pytest.raises(PressoError, match="known objectives: my_metric"):
        parse_constraint("ppl_ratio <= 1", known=["my_metric"])


def test_violation_and_satisfied():
    le, ge = Constraint("ppl_ratio", "<=", 1.1), Constraint("embedding_cosine", ">=", 0.99)
    values = {"ppl_ratio": 1.3, "embedding_cosine": 0.995}
    assert le.violation(values) == pytest.approx(0.2) and not le.satisfied(values)
    assert ge.violation(values) == pytest.approx(-0.005) and ge.satisfied(values)
    assert le.satisfied({"ppl_ratio": 1.1})  # on the bound is feasible (Optuna: <= 0)
    assert le.violation({"ppl_ratio": math.nan}) == math.inf
    assert constraint_values([le, ge], values) == [le.violation(values), ge.violation(values)]
    assert total_violation([le, ge], values) == pytest.approx(0.2)
    with pytest.raises(PressoError, match="no value for 'ppl_ratio'; values given: x"):
        le.violation({"x": 1.0})


@pytest.mark.parametrize(
    "args, match",
    [(("ppl_ratio", "<", 1.0), "op"), (("ppl_ratio", "<=", math.inf), "bound"), (("1x", "<=", 1.0), "name")],
)
def test_constraint_checks(args, match):
    with pytest.raises(PressoError, match=match):
        Constraint(*args)


def test_check_constraints():
    constraints = [parse_constraint("ppl_ratio <= 1.1"), parse_constraint("size_fraction <= 0.3")]
    check_constraints(constraints, ["ppl_ratio", "size_fraction", "latency_ms"])
    with pytest.raises(PressoError, match=r"'size_fraction <= 0\.3': the study does not compute 'size_fraction'.*\(study objectives: ppl_ratio, size_bytes\)"):
        check_constraints(constraints, ["ppl_ratio", "size_bytes"])
