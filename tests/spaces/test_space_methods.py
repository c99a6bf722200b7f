"""The quantization method as a searchable choice (per group, like bits)."""

import random

import pytest

from presso.errors import PressoError
from presso.spaces import SearchSpace

LLAMA_NAMES = [f"model.layers.{i}.mlp.{p}" for i in range(2) for p in ("gate_proj", "up_proj", "down_proj")]


def space(**group):
    base = {"name": "g", "modules": ["model.layers.*.mlp.*"], "bits": [4, 16], "group_size": [32, 64]}
    base.update(group)
    return SearchSpace.from_dict({"groups": [base]})


def recording_ask(seed=0):
    rng = random.Random(seed)
    asked = []

    def ask(name, domain):
        asked.append(name)
        return rng.choice(domain.grid())

    return ask, asked


def test_method_is_asked_per_unit_only_when_quantized():
    bound = space(tie="group", bits=[4], method=["rtn", "gptq", "rtn_fmin"], symmetric=[False, True]).bind(LLAMA_NAMES)
    seen = set()
    for seed in range(12):
        ask, asked = recording_ask(seed)
        plan = bound.sample(ask)
        assert "g/all/method" in asked
        quant = next(iter(plan.layers.values())).quant
        seen.add(quant.method)
        if quant.method == "rtn_fmin":
            assert not quant.symmetric and "g/all/symmetric" not in asked
    assert seen == {"rtn", "gptq", "rtn_fmin"}
    ask, asked = recording_ask()
    space(tie="group", bits=16, method=["rtn", "gptq"]).bind(LLAMA_NAMES).sample(ask)
    assert "g/all/method" not in asked


def test_default_method_is_rtn_and_space_round_trips():
    plan = space(tie="group", bits=[4]).bind(LLAMA_NAMES).sample(recording_ask()[0])
    assert {c.quant.method for c in plan.layers.values()} == {"rtn"}
    s = space(method=["rtn", "imatrix"])
    assert SearchSpace.from_dict(s.to_dict()) == s


@pytest.mark.parametrize("value, message", [
    (["rtn", "awq"], r"method.*got 'awq'; allowed: \['gptq', 'imatrix', 'rtn', 'rtn_fmin'\]"),
    ({"low": 1, "high": 2}, r"method"),
])
def test_bad_methods_are_named(value, message):
    with pytest.raises(PressoError, match=message):
        space(method=value)
