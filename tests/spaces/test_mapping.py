"""A stored plan mapped back onto a space's parameters, and a unit's choices (no torch)."""

import random

import pytest

from presso.errors import PressoError
from presso.plan import LayerConfig, Plan, QuantConfig, SparsityConfig
from presso.spaces import Choice, FloatRange, IntRange, SearchSpace, nearest_value, plan_to_params, unit_choices

NAMES = [f"model.layers.{i}.mlp.{p}" for i in range(2) for p in ("up_proj", "down_proj")]
SPACE = {"groups": [{"name": "mlp", "modules": ["model.layers.*.mlp.*"], "tie": "block",
                     "sparsity": {"low": 0.0, "high": 0.5, "step": 0.25}, "bits": [4, 8, 16],
                     "group_size": [32, 64], "method": ["rtn", "rtn_fmin"]}]}


def bound():
    return SearchSpace.from_dict(SPACE).bind(NAMES)


@pytest.mark.parametrize("seed", range(20))
def test_a_sampled_plan_maps_back_to_the_parameters_that_made_it(seed):
    space, rng = bound(), random.Random(seed)
    asked: dict = {}

    def ask(name, domain):
        asked[name] = rng.choice(domain.grid())
        return asked[name]

    plan = space.sample(ask)
    params, mapped = plan_to_params(plan, space)
    assert (params, mapped) == (asked, 0)
    assert space.sample(lambda name, domain: params[name]) == plan


def test_values_off_the_space_move_to_the_nearest_choice_and_are_counted():
    space = bound()
    off = LayerConfig(sparsity=SparsityConfig(amount=0.3), quant=QuantConfig(bits=5, group_size=48))
    params, mapped = plan_to_params(Plan(layers={n: off for n in NAMES}), space)
    assert {k.rsplit("/", 1)[1]: v for k, v in params.items()} == {
        "sparsity": 0.25, "bits": 4, "group_size": 32, "method": "rtn"}
    assert mapped == 3 * len(space.units)  # sparsity, bits and group size moved; the method fits


def test_a_plan_for_another_model_is_rejected():
    other = Plan(layers={"encoder.layer.0.query": LayerConfig(quant=QuantConfig(bits=4))})
    with pytest.raises(PressoError, match="covers none"):
        plan_to_params(other, bound())


def test_unit_choices_are_every_distinct_config_of_the_grid():
    unit = bound().units[0]
    choices = unit_choices(unit)
    configs = [config for _, config in choices]
    # 3 sparsities x (16 bits, or 4/8 bits x 2 group sizes x 2 methods): 3 x 9
    assert len(choices) == len({repr(c) for c in configs}) == 27
    for params, config in choices:
        assert all(k.startswith(unit.param("")) for k in params)
        assert config == bound()._sample_unit(unit, lambda name, domain: params[name])


@pytest.mark.parametrize("domain, wanted, expected", [
    (FloatRange(0.0, 0.5, step=0.25), 0.3, 0.25),
    (FloatRange(0.0, 0.5, step=0.25), 0.9, 0.5),
    (FloatRange(0.1, 0.5), None, 0.1),
    (IntRange(0, 64, step=16), 44, 48),
    (Choice((4, 8, 16)), 5, 4),
    (Choice((4, 8, 16)), 12, 8),  # a tie goes to the smaller value
    (Choice(("rtn", "gptq")), "imatrix", "rtn"),
    # ggml formats: the nearest in bits per weight (a tie goes to the smaller), not the first listed
    (Choice(("Q8_0", "Q5_1", "Q5_0", "Q4_1", "IQ4_NL")), "Q2_K", "IQ4_NL"),
    (Choice(("Q8_0", "Q6_K", "Q5_K", "Q4_K", "Q3_K", "Q2_K")), "IQ4_NL", "Q4_K"),
    (Choice(("Q8_0", "Q6_K", "Q5_K", "Q4_K")), "Q4_1", "Q4_K"),
    (Choice(("F16", "Q8_0")), "Q4_0", "Q8_0"),
])
def test_nearest_value(domain, wanted, expected):
    assert nearest_value(domain, wanted) == expected
