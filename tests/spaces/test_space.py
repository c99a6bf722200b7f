import random
import subprocess
import sys

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from presso.errors import PressoError
from presso.spaces import Choice, FloatRange, SearchSpace, builtin_spaces, load_space

LLAMA_NAMES = [
    f"model.layers.{i}.{part}"
    for i in range(4)
    for part in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
]


def space(**group):
    base = {"name": "g", "modules": ["model.layers.*.mlp.*"], "bits": [4, 16], "group_size": [32, 64],
            "sparsity": {"low": 0.0, "high": 0.5, "step": 0.25}}
    base.update(group)
    return SearchSpace.from_dict({"groups": [base]})


def recording_ask(seed=0):
    rng = random.Random(seed)
    asked = []

    def ask(name, domain):
        asked.append(name)
        return rng.choice(domain.grid())

    return ask, asked


@pytest.mark.parametrize("tie, units", [("module", 12), ("block", 4), ("group", 1)])
def test_tie_modes_give_units(tie, units):
    bound = space(tie=tie).bind(LLAMA_NAMES)
    assert len(bound.units) == units
    assert sum(len(u.modules) for u in bound.units) == 12


def test_blocks_per_unit_and_stable_names():
    bound = space(blocks_per_unit=2).bind(LLAMA_NAMES)
    assert [u.unit_id for u in bound.units] == ["blocks0-1", "blocks2-3"]
    ask, asked = recording_ask()
    bound.sample(ask)
    assert set(asked) <= {f"g/blocks{b}/{k}" for b in ("0-1", "2-3") for k in ("bits", "group_size", "sparsity")}


def test_group_size_is_conditional_on_quantization():
    bound = space(tie="group", bits=16).bind(LLAMA_NAMES)
    ask, asked = recording_ask()
    plan = bound.sample(ask)
    assert asked == ["g/all/sparsity"]  # 16 bits is fixed -> no group size asked
    assert all(c.quant.bits == 16 for c in plan.layers.values())


def test_n_m_structure_skips_sparsity():
    bound = space(tie="group", structure=["2:4"]).bind(LLAMA_NAMES)
    ask, asked = recording_ask()
    plan = bound.sample(ask)
    assert "g/all/sparsity" not in asked
    assert all(c.sparsity.amount == 0.5 and c.sparsity.structure == "2:4" for c in plan.layers.values())


def test_first_group_wins_and_regex_patterns():
    s = SearchSpace.from_dict({"groups": [
        {"name": "down", "modules": [r"re:model\.layers\.\d+\.mlp\.down_proj"], "tie": "group", "bits": 8},
        {"name": "mlp", "modules": ["model.layers.*.mlp.*"], "tie": "group", "bits": 4, "group_size": 32},
    ]})
    plan = s.bind(LLAMA_NAMES).sample(lambda n, d: d.grid()[0])
    assert plan.layers["model.layers.2.mlp.down_proj"].quant.bits == 8
    assert plan.layers["model.layers.2.mlp.up_proj"].quant.bits == 4
    assert "model.layers.2.self_attn.q_proj" not in plan.layers


def test_pattern_matching_nothing_lists_real_names():
    with pytest.raises(PressoError, match=r"matches no module; the model's modules look like: model.layers.0.self_attn.q_proj"):
        space(modules=["encoder.*"]).bind(LLAMA_NAMES)


@pytest.mark.parametrize(
    "group, message",
    [
        ({"sparsity": {"low": 0.5, "high": 0.1}}, r"`low <= high` must hold, but got \(low=0.5, high=0.1\)"),
        ({"sparsity": {"low": 0.0, "high": 1.0}}, r"sparsity.amount: got 1.0"),
        ({"sparsity": {"low": 0.0}}, "needs both 'low' and 'high'"),
        ({"bits": [3, 12]}, r"quant.bits: got 12"),
        ({"bits": []}, "empty list"),
        ({"tie": "layer"}, r"tie: got 'layer'; allowed: \['module', 'block', 'group'\]"),
        ({"structure": ["2:4", "9:3"]}, "0 < N < M"),
        ({"rank": [-1, 4]}, "adapter.rank: got -1"),
        ({"modules": []}, "modules: got \\[\\]"),
        ({"bitz": [4]}, r"unknown key 'bitz' \(did you mean 'bits'\?\)"),
        ({"modules": ["re:(unclosed"]}, "not a valid regex"),
    ],
)
def test_bad_spaces(group, message):
    with pytest.raises(PressoError, match=message):
        space(**group)


def test_defaults_are_validated_early():
    with pytest.raises(PressoError, match="space.defaults: plan.criterion: got 'obs'"):
        SearchSpace.from_dict({"defaults": {"criterion": "obs"}, "groups": [{"modules": ["x"]}]})


def test_uniform_choices_cover_grid_and_clamp():
    bound = space(tie="block").bind(LLAMA_NAMES)
    combos = bound.uniform_choices()
    assert len(combos) == 3 * (1 + 2)  # 3 sparsities x (16 bits, or 4 bits x 2 group sizes)
    params = bound.params_for({"sparsity": 0.9, "bits": 4, "group_size": 64})
    assert {v for k, v in params.items() if k.endswith("sparsity")} == {0.5}


def test_builtin_spaces_load_and_round_trip():
    assert {"builtin:smollm2-135m", "builtin:minilm-l6", "builtin:tiny"} <= set(builtin_spaces())
    for ref in builtin_spaces():
        loaded = load_space(ref)
        assert SearchSpace.from_dict(yaml.safe_load(yaml.safe_dump(loaded.to_dict()))) == loaded
    with pytest.raises(PressoError, match=r"unknown built-in 'builtin:smollm2' \(did you mean"):
        load_space("builtin:smollm2")


def test_malformed_yaml_file(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("groups: [\n  - name: x\n")
    with pytest.raises(PressoError, match="not valid YAML"):
        load_space(path)


domains = st.one_of(
    st.floats(0, 0.9).map(lambda x: round(x, 3)),
    st.lists(st.sampled_from([0.0, 0.1, 0.2, 0.5]), min_size=1, max_size=4, unique=True),
    st.tuples(st.floats(0, 0.4), st.floats(0.4, 0.9)).map(lambda t: {"low": round(t[0], 3), "high": round(t[1], 3), "step": 0.1}),
)


@settings(max_examples=40, deadline=None)
@given(sparsity=domains, bits=st.lists(st.sampled_from([2, 3, 4, 8, 16]), min_size=1, max_size=3, unique=True),
       tie=st.sampled_from(["module", "block", "group"]))
def test_space_round_trip_property(sparsity, bits, tie):
    s = space(sparsity=sparsity, bits=bits, tie=tie)
    again = SearchSpace.from_dict(yaml.safe_load(yaml.safe_dump(s.to_dict())))
    assert again == s
    plan = again.bind(LLAMA_NAMES).sample(recording_ask(1)[0])
    assert len(plan.layers) == 12


def test_importing_spaces_stays_lean():
    code = (
        "import sys, presso.spaces, presso.plan\n"
        "heavy = [m for m in ('torch', 'optuna', 'ray', 'mlflow', 'transformers') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_choice_and_range_checks():
    with pytest.raises(PressoError, match="distinct"):
        Choice((4, 4))
    assert FloatRange(0.0, 0.5, 0.1).grid() == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
