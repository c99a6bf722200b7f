import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from presso.errors import PressoError
from presso.plan import (
    BITS_ALLOWED,
    AdapterConfig,
    LayerConfig,
    Plan,
    QuantConfig,
    RecoveryConfig,
    SparsityConfig,
    load_plan,
    plan_from_dict,
    plan_to_dict,
    plan_to_yaml,
    save_plan,
)


def test_n_m_structure_implies_amount():
    assert SparsityConfig(structure="2:4").amount == 0.5
    assert SparsityConfig(structure="1:4", amount=0.75).n_m == (1, 4)
    with pytest.raises(PressoError, match="implies 0.5"):
        SparsityConfig(structure="2:4", amount=0.3)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: SparsityConfig(amount=1.0), r"sparsity.amount: got 1.0; allowed: a fraction in \[0, 1\)"),
        (lambda: SparsityConfig(amount=-0.1), "sparsity.amount: got -0.1"),
        (lambda: SparsityConfig(structure="4:2"), "0 < N < M"),
        (lambda: SparsityConfig(structure="blocky"), "sparsity.structure: got 'blocky'"),
        (lambda: QuantConfig(bits=1), r"quant.bits: got 1; allowed: \[2, 3, 4, 5, 6, 7, 8, 16\]"),
        (lambda: QuantConfig(bits=4.0), "quant.bits: got 4.0"),
        (lambda: QuantConfig(group_size=-32), "quant.group_size: got -32"),
        (lambda: QuantConfig(symmetric="yes"), "quant.symmetric"),
        (lambda: AdapterConfig(rank=-1), "adapter.rank: got -1"),
        (lambda: RecoveryConfig(lr=0), "recovery.lr: got 0"),
        (lambda: Plan(criterion="obs"), r"plan.criterion: got 'obs'; allowed: \['magnitude', 'wanda', 'sparsegpt'\]"),
        (lambda: Plan(layers={"re:(": LayerConfig()}), "not a valid regex"),
    ],
)
def test_bad_values_name_field_value_and_allowed(make, message):
    with pytest.raises(PressoError, match=message):
        make()


def test_unknown_keys_are_rejected_with_suggestion():
    data = plan_to_dict(Plan(layers={"a": LayerConfig(quant=QuantConfig(bits=4))}))
    data["_data"]["layers"]["a"]["quant"]["bit"] = 4
    with pytest.raises(PressoError, match=r"unknown key 'bit' \(did you mean 'bits'\?\)"):
        plan_from_dict(data)
    with pytest.raises(PressoError, match="plan._type: got 'os.system'"):
        plan_from_dict({"_type": "os.system", "_version": 1, "_data": {}})


def test_newer_version_refused_older_warns():
    data = plan_to_dict(Plan())
    data["_version"] = 99
    with pytest.raises(PressoError, match="versions up to 1"):
        plan_from_dict(data)
    data["_version"] = 0
    with pytest.warns(UserWarning, match="format version 0"):
        plan_from_dict(data)


def test_precedence_exact_beats_regex_first_regex_wins():
    four = LayerConfig(quant=QuantConfig(bits=4))
    eight = LayerConfig(quant=QuantConfig(bits=8))
    three = LayerConfig(quant=QuantConfig(bits=3))
    plan = Plan(layers={"re:.*mlp.*": four, "re:.*up_proj": eight, "model.layers.0.mlp.up_proj": three})
    assert plan.config_for("model.layers.0.mlp.up_proj") is three
    assert plan.config_for("model.layers.1.mlp.up_proj") is four
    assert plan.config_for("model.layers.1.self_attn.q_proj") is None
    resolved = plan.resolve(["model.layers.0.mlp.up_proj", "model.layers.1.self_attn.q_proj"])
    assert list(resolved) == ["model.layers.0.mlp.up_proj"]
    with pytest.raises(PressoError, match="module 'nope' is not in the model"):
        Plan(layers={"nope": four}).resolve(["a", "b"])


def test_yaml_and_json_files_round_trip(tmp_path):
    plan = Plan(
        layers={"m.0.q": LayerConfig(SparsityConfig(0.3), QuantConfig(3, 32, True), AdapterConfig(8, 16.0))},
        model="tiny:llama", criterion="wanda", recovery=RecoveryConfig(steps=5), seed=7,
    )
    for name in ("plan.yaml", "plan.json"):
        save_plan(plan, tmp_path / name)
        assert load_plan(tmp_path / name) == plan
    with pytest.raises(PressoError, match="already exists; pass --force"):
        save_plan(plan, tmp_path / "plan.yaml")
    save_plan(plan, tmp_path / "plan.yaml", force=True)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_yaml_cannot_construct_python_objects(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("_type: Plan\n_version: 1\n_data: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(PressoError, match="not valid YAML"):
        load_plan(path)


def test_hand_written_plan_without_envelope(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text("model: tiny:llama\nlayers:\n  're:.*mlp.*': {quant: {bits: 4, group_size: 32}}\n")
    plan = load_plan(path)
    assert plan.config_for("model.layers.1.mlp.up_proj").quant.bits == 4


layer_configs = st.builds(
    LayerConfig,
    sparsity=st.one_of(
        st.builds(SparsityConfig, amount=st.floats(0, 0.99, allow_nan=False)),
        st.sampled_from(["2:4", "1:4", "4:8"]).map(lambda s: SparsityConfig(structure=s)),
    ),
    quant=st.builds(QuantConfig, bits=st.sampled_from(BITS_ALLOWED), group_size=st.sampled_from([0, 32, 64, 128]),
                    symmetric=st.booleans()),
    adapter=st.builds(AdapterConfig, rank=st.integers(0, 64),
                      alpha=st.one_of(st.none(), st.floats(0.5, 64, allow_nan=False))),
)
plans = st.builds(
    Plan,
    layers=st.dictionaries(st.from_regex(r"[a-z]{1,4}(\.[0-9]{1,2}\.[a-z_]{1,6})?", fullmatch=True), layer_configs,
                           max_size=6),
    model=st.one_of(st.none(), st.just("builtin:smollm2-135m")),
    criterion=st.sampled_from(["magnitude", "wanda", "sparsegpt"]),
    seed=st.integers(0, 2**31),
)


@settings(max_examples=60, deadline=None)
@given(plans)
def test_round_trip_property(plan):
    assert plan_from_dict(plan_to_dict(plan)) == plan
    assert plan_from_dict(json.loads(json.dumps(plan_to_dict(plan)))) == plan
    import yaml

    assert plan_from_dict(yaml.safe_load(plan_to_yaml(plan))) == plan
