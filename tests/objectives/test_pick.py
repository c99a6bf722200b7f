"""Pick rules for ``presso export --pick``, with hypothesis round trips."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from presso.errors import PressoError
from presso.objectives import PICK_GRAMMAR, Constraint, PickRule, parse_pick_rule, registered_objectives

ROWS = [
    (0, {"size_bytes": 9e6, "ppl_ratio": 1.02, "latency_ms": 30.0}),
    (1, {"size_bytes": 4e6, "ppl_ratio": 1.31, "latency_ms": 10.0}),
    (2, {"size_bytes": 5e6, "ppl_ratio": 1.08, "latency_ms": 25.0}),
    (3, {"size_bytes": 5e6, "ppl_ratio": 1.09, "latency_ms": 12.0}),
    (4, {"size_bytes": 7e6, "ppl_ratio": 1.05, "latency_ms": 11.0}),
]


def test_parse():
    rule = parse_pick_rule("min size_bytes where ppl_ratio <= 1.10")
    assert rule == PickRule("min", "size_bytes", (Constraint("ppl_ratio", "<=", 1.1),))
    assert str(rule) == "min size_bytes where ppl_ratio <= 1.1"
    assert parse_pick_rule("MAX  accuracy") == PickRule("max", "accuracy")
    two = parse_pick_rule("min latency_ms WHERE ppl_ratio<=1.1 AND size_fraction <= 0.5")
    assert [c.name for c in two.where] == ["ppl_ratio", "size_fraction"]


def test_choose_min_with_condition_and_tie_break():
    chosen = parse_pick_rule("min size_bytes where ppl_ratio <= 1.10").choose(ROWS)
    assert chosen is ROWS[2]  # trials 2 and 3 tie on size; the lower number wins


def test_choose_max_and_multiple_conditions():
    assert parse_pick_rule("max ppl_ratio").choose(ROWS)[0] == 1
    rule = parse_pick_rule("min size_bytes where ppl_ratio <= 1.10 and latency_ms <= 20")
    assert rule.choose(ROWS)[0] == 3
    assert rule.choose(reversed(ROWS))[0] == 3


def test_tie_break_independent_of_order():
    rows = [(7, {"size_bytes": 1.0}), (2, {"size_bytes": 1.0}), (5, {"size_bytes": 2.0})]
    assert parse_pick_rule("min size_bytes").choose(rows)[0] == 2


def test_non_finite_target_never_chosen():
    rows = [(0, {"size_bytes": math.nan}), (1, {"size_bytes": 5.0})]
    assert parse_pick_rule("min size_bytes").choose(rows)[0] == 1
    with pytest.raises(PressoError, match="none of 1 trials satisfies a finite size_bytes"):
        parse_pick_rule("min size_bytes").choose(rows[:1])


def test_none_satisfy_lists_three_closest():
    rule = parse_pick_rule("min size_bytes where ppl_ratio <= 1.0 and latency_ms <= 10.5")
    with pytest.raises(PressoError) as info:
        rule.choose(ROWS)
    message = str(info.value)
    assert "\n" not in message
    # total violations: trial 1 0.31, trial 4 0.55, trial 3 1.59, trial 2 14.58, trial 0 19.52
    assert message == (
        "pick rule 'min size_bytes where ppl_ratio <= 1.0 and latency_ms <= 10.5': none of 5 trials satisfies "
        "ppl_ratio <= 1.0 and latency_ms <= 10.5; closest: "
        "trial 1 (size_bytes=4e+06, ppl_ratio=1.31, latency_ms=10); "
        "trial 4 (size_bytes=7e+06, ppl_ratio=1.05, latency_ms=11); "
        "trial 3 (size_bytes=5e+06, ppl_ratio=1.09, latency_ms=12)"
    )


def test_choose_errors():
    rule = parse_pick_rule("min size_bytes where ppl_ratio <= 1.1")
    with pytest.raises(PressoError, match="no finished trials"):
        rule.choose([])
    with pytest.raises(PressoError, match="trial 0 has no value for 'ppl_ratio'; the study's values: size_bytes"):
        rule.choose([(0, {"size_bytes": 1.0})])


@pytest.mark.parametrize(
    "text",
    [
        "",
        "min",
        "size_bytes",
        "avg size_bytes",
        "min size_bytes where",
        "min size_bytes when ppl_ratio <= 1",
        "min size_bytes where ppl_ratio < 1.1",
        "min size_bytes where ppl_ratio <= 1.1 and",
        "min size_bytes where ppl_ratio <= 1.1 or latency_ms <= 3",
        "min size_bytes, max accuracy",
    ],
)
def test_bad_rules_state_the_grammar(text):
    with pytest.raises(PressoError) as info:
        parse_pick_rule(text)
    message = str(info.value)
    assert message.startswith(f"pick rule: got {text!r}") and message.endswith(f"grammar: {PICK_GRAMMAR}")
    assert "e.g. 'min size_bytes where ppl_ratio <= 1.10'" in message and "\n" not in message


@pytest.mark.parametrize(
    "text, name",
    [("min size_byte", "size_byte"), ("min size_bytes where ppl <= 1", "ppl")],
)
def test_unknown_names_listed(text, name):
    with pytest.raises(PressoError, match=f"unknown objective '{name}'.*known objectives: accuracy, accuracy_drop, "):
        parse_pick_rule(text)


def test_known_names_override():
    rule = parse_pick_rule("max my_metric where other >= 0", known=["my_metric", "other"])
    assert rule.choose([(0, {"my_metric": 1.0, "other": 1.0})])[0] == 0


# -- property tests -----------------------------------------------------------------------

names = st.sampled_from(registered_objectives())
bounds = st.floats(allow_nan=False, allow_infinity=False, width=64)
constraints = st.builds(Constraint, names, st.sampled_from(["<=", ">="]), bounds)
rules = st.builds(PickRule, st.sampled_from(["min", "max"]), names, st.lists(constraints, max_size=4).map(tuple))


def _spell(rule: PickRule, upper: bool, tight: bool) -> str:
    """Another valid spelling: upper-case keywords, no spaces around operators."""
    kw = str.upper if upper else str
    text = f"{kw(rule.sense)}   {rule.name}"
    if rule.where:
        sep = "" if tight else " "
        conds = f" {kw('and')} ".join(f"{c.name}{sep}{c.op}{sep}{c.bound!r}" for c in rule.where)
        text += f" {kw('where')} {conds}"
    return text


@given(rules)
def test_round_trip(rule):
    assert parse_pick_rule(str(rule)) == rule
    assert str(parse_pick_rule(str(rule))) == str(rule)


@given(rules, st.booleans(), st.booleans())
def test_spellings_parse_to_the_same_rule(rule, upper, tight):
    assert parse_pick_rule(_spell(rule, upper, tight)) == rule


@given(st.text(max_size=40))
def test_arbitrary_text_parses_or_raises_presso_error(text):
    try:
        rule = parse_pick_rule(text)
    except PressoError as exc:
        assert "\n" not in str(exc).replace(repr(text), "")
    else:
        assert parse_pick_rule(str(rule)) == rule


_N = len(registered_objectives())


@given(rules, st.lists(st.tuples(st.integers(0, 50), st.lists(bounds, min_size=_N, max_size=_N)), min_size=1, max_size=8))
def test_choice_is_feasible_and_optimal(rule, raw):
    keys = registered_objectives()
    rows = [(number, dict(zip(keys, values))) for number, values in raw]
    feasible = [r for r in rows if all(c.satisfied(r[1]) for c in rule.where)]
    try:
        number, values = rule.choose(rows)
    except PressoError:
        assert not feasible
        return
    assert all(c.satisfied(values) for c in rule.where)
    sign = 1 if rule.sense == "min" else -1
    best = min(sign * r[1][rule.name] for r in feasible)
    assert sign * values[rule.name] == best
    assert number == min(n for n, v in feasible if sign * v[rule.name] == best)
