"""Warm starts on the 2-layer tiny model: sensitivity-guided plans, uniform plans, and a new
study started from an earlier study's front (also through ``presso run --warm-start-from``)."""

import pytest
import torch
import yaml

from presso.errors import PressoError
from presso.search import EvalConfig, Evaluator, StudyConfig, load_existing_study, run_study, study_from_dict
from presso.search._config import WarmStartConfig
from presso.search._records import pareto_rows, trial_rows
from presso.compress import stored_weight_bytes
from presso.search._allocation import UnitChoice, allocate_near_uniform, choices_of, least_damage
from presso.spaces import plan_to_params

TWO_BLOCKS = {  # one unit per block, so each block gets its own sensitivity
    "defaults": {"criterion": "wanda", "calibration_samples": 4, "calibration_seq_len": 32},
    "groups": [{"name": "all", "modules": ["re:.*\\.(\\d+)\\..*"], "tie": "block",
                "sparsity": {"low": 0.0, "high": 0.6, "step": 0.2}, "bits": [4, 8, 16], "group_size": [32]}],
}


def config(tmp_path, **changes) -> StudyConfig:
    base = dict(name="ws", model="tiny:llama", space=TWO_BLOCKS, trials=10, device="cpu",
                storage=f"sqlite:///{tmp_path}/studies.db", tracking_uri=None, eval=EvalConfig(sequences=4, seq_len=32))
    return StudyConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory):
    return Evaluator(config(tmp_path_factory.mktemp("ev")))


def test_warm_start_setting_accepts_bool_or_mapping_and_rejects_the_rest():
    assert StudyConfig(warm_start=True).warm_start == WarmStartConfig()
    off = StudyConfig(warm_start=False).warm_start
    assert not off and not off.uniform and not off.sensitivity
    parsed = study_from_dict({"warm_start": {"sensitivity": False, "from_study": "old"}}).warm_start
    assert parsed.uniform and not parsed.sensitivity and parsed.from_study == "old"
    for bad, words in [({"warm_start": 3}, "true, false or a mapping"),
                       ({"warm_start": {"sensitivty": True}}, "did you mean 'sensitivity'"),
                       ({"warm_start": {"uniform": "yes"}}, "study.warm_start.uniform"),
                       ({"warm_start": {"sensitivity_plans": 0}}, "an integer >= 1"),
                       ({"warm_start": {"from_storage": "studies.db"}}, "SQLAlchemy URL")]:
        with pytest.raises(PressoError, match=words):
            study_from_dict(bad)


def test_stored_bytes_match_the_size_report(evaluator):
    """The allocation's unit sizes are exact: they equal what compress_ reports per module."""
    from presso.compress import compressible_modules

    modules = compressible_modules(evaluator.loaded.model)
    unit = evaluator.bound.units[0]
    for choice in choices_of(unit):
        plan = evaluator.bound.space.base_plan({m: choice.config for m in unit.modules})
        _, result = evaluator.assets.compress(plan)
        for name in unit.modules:
            weight = modules[name].weight
            predicted = stored_weight_bytes(choice.config, tuple(weight.shape), weight.dtype, plan.criterion)
            reported = result.size.modules[name] if name in result.size.modules else None
            actual = (reported.total_bytes - reported.bias_bytes) if reported else weight.numel() * weight.element_size()
            assert predicted == actual, (choice.config, name)


def test_allocation_gives_sensitive_units_the_gentle_choices():
    # Two identical units (sizes 100/60/30 bytes, relative errors 0/0.3/1); unit 0 is 10x as sensitive.
    def unit():
        return [UnitChoice({}, None, size=s, error=e) for s, e in ((100, 0.0), (60, 0.3), (30, 1.0))]

    per_unit = [unit(), unit()]
    damages = [[10 * c.error for c in per_unit[0]], [1 * c.error for c in per_unit[1]]]
    picks = least_damage(per_unit, damages, budget=130)  # room for one gentle and one hard unit
    assert [per_unit[u][i].size for u, i in enumerate(picks)] == [100, 30]
    picks = least_damage(per_unit, damages, budget=120)  # 60 + 60 or 100 + 30 (> budget): both medium
    assert sum(per_unit[u][i].size for u, i in enumerate(picks)) <= 120
    assert least_damage(per_unit, damages, budget=10) == []  # below the smallest reachable size


def test_per_group_seed_moves_a_sensitive_table_off_the_recipe():
    """A small, sensitive embedding and robust blocks: the near-uniform reshuffle cannot leave
    4 bits (every unit stays within 30% of its size), the per-group plan of the same size can:
    the table at 8 bits, the blocks at 2."""
    from presso.spaces import SearchSpace

    space = SearchSpace.from_dict({"groups": [
        {"name": "embed", "modules": ["emb"], "tie": "group", "bits": [2, 4, 8]},
        {"name": "blocks", "modules": ["re:layers\\.\\d+\\.lin"], "bits": [2, 4, 8]},
    ]})
    bound = space.bind(["layers.0.lin", "layers.1.lin"], exact_names=["emb"])
    damage_by_bits = {"embed": {2: 40.0, 4: 10.0, 8: 0.0}, "blocks": {2: 0.5, 4: 0.05, 8: 0.0}}
    per_unit, damages = [], []
    for unit in bound.units:
        choices = choices_of(unit)
        for c in choices:
            c.size = 25 * c.config.quant.bits
        per_unit.append(choices)
        damages.append([damage_by_bits[unit.group.name][c.config.quant.bits] for c in choices])
    plans = dict(allocate_near_uniform(bound, per_unit, damages, count=2))
    assert plans["uniform sparsity=0.0, bits=4, group_size=0"] == [1, 1, 1]  # near-uniform: stuck at the recipe
    # Per-group budgets spread between the smallest recipe (150) and the free one (600): 300, 450.
    per_group = {name: picks for name, picks in plans.items() if name.startswith("per-group")}
    assert set(per_group) == {"per-group, at most 300 bytes", "per-group, at most 450 bytes"}
    bits = {name: [per_unit[i][j].config.quant.bits for i, j in enumerate(p)] for name, p in per_group.items()}
    assert bits["per-group, at most 300 bytes"] == [8, 2, 2]  # same size as uniform 4-bit, damage 1.0 vs 10.1
    assert bits["per-group, at most 450 bytes"] == [8, 4, 4]


RTN_OR_GPTQ = {  # one grid under two methods: every uniform plan has an equal-size twin
    "defaults": {"calibration_samples": 4, "calibration_seq_len": 32},
    "groups": [{"name": "all", "modules": ["re:.*\\.(\\d+)\\..*"], "tie": "block",
                "bits": [2, 4, 8], "group_size": [32], "method": ["rtn", "gptq"]}],
}


def test_uniform_seeds_of_equal_size_are_the_method_with_less_error(tmp_path):
    """The uniform seeds are GPTQ at every size (its output error is the smaller), not the first
    listed method; and the sensitivity-guided plans choose GPTQ too, measured through the
    Hessians the warm start now collects."""
    from presso.search._warmstart import sensitivity_plans, spread_by_size

    evaluator = Evaluator(config(tmp_path, space=RTN_OR_GPTQ))
    seeds = spread_by_size(evaluator.bound.uniform_choices(), evaluator.bound, evaluator, 3)
    assert [(c["bits"], c["method"]) for c in seeds] == [(2, "gptq"), (4, "gptq"), (8, "gptq")]
    plans, _ = sensitivity_plans(evaluator, 2)
    methods = {v for params, _ in plans for k, v in params.items() if k.endswith("/method")}
    assert methods == {"gptq"}


def test_new_study_enqueues_sensitivity_then_uniform_plans(tmp_path):
    cfg = config(tmp_path, trials=10)
    run_study(cfg, progress=False)
    study = load_existing_study("ws", cfg.storage)
    info = study.user_attrs["warm_start"]
    # two uniform plans (10 // 5): the smallest and the largest compressed one, each enqueued
    # unless a sensitivity plan is that same plan already
    assert info["counts"]["sensitivity"] >= 1 and 1 <= info["counts"]["uniform"] <= 2
    assert set(info["sensitivity"]) == {f"all/block{b}/{k}" for b in (0, 1) for k in ("prune", "quant")}
    smallest = {f"all/block{b}/{k}": v for b in (0, 1) for k, v in (("sparsity", 0.6), ("bits", 4), ("group_size", 32))}
    largest = {f"all/block{b}/{k}": v for b in (0, 1) for k, v in (("sparsity", 0.2), ("bits", 16))}
    tried = [study.trials[r.number].params for r in trial_rows(study) if r.user_attrs.get("seeded")]
    assert smallest in tried and largest in tried
    seeded = [r.user_attrs.get("seeded") for r in trial_rows(study)]
    first_uniform = seeded.index("uniform")
    assert all(s == "sensitivity" for s in seeded[:first_uniform])
    sens = [r for r in trial_rows(study) if r.user_attrs.get("seeded") == "sensitivity"]
    for row in sens:  # the exact size model: predicted and measured sizes agree closely
        assert row.values["size_fraction"] == pytest.approx(row.user_attrs["predicted_size_fraction"], abs=2e-3)


def test_warm_start_off_enqueues_nothing(tmp_path):
    cfg = config(tmp_path, trials=3, warm_start=False, sampler="random")
    run_study(cfg, progress=False)
    study = load_existing_study("ws", cfg.storage)
    assert not any("seeded" in r.user_attrs for r in trial_rows(study))
    assert study.user_attrs["warm_start"]["counts"] == {}


def test_warm_start_from_an_earlier_study_maps_its_front_onto_a_new_space(tmp_path, capsys):
    first = config(tmp_path, name="first", trials=6, warm_start={"sensitivity": False})
    run_study(first, progress=False)
    front = pareto_rows(load_existing_study("first", first.storage))
    # The new space ties everything into one unit and offers other bit widths: plans are mapped.
    other_space = {"defaults": TWO_BLOCKS["defaults"],
                   "groups": [{"name": "all", "modules": ["re:.*\\.(\\d+)\\..*"], "tie": "group",
                               "sparsity": {"low": 0.0, "high": 0.5, "step": 0.25}, "bits": [4, 8],
                               "group_size": [32]}]}
    second = config(tmp_path, name="second", space=other_space, trials=len(front) + 1,
                    warm_start={"from_study": "first", "uniform": False, "sensitivity": False})
    run_study(second, progress=False)
    out = capsys.readouterr().out
    assert "from the front of study 'first'" in out
    rows = trial_rows(load_existing_study("second", second.storage))
    seeded = [r for r in rows if r.user_attrs.get("seeded") == "from_study"]
    assert 1 <= len(seeded) <= len(front)
    assert all(r.user_attrs["from_trial"].startswith("first#") for r in seeded)
    for row in seeded:
        assert row.params["all/all/bits"] in (4, 8)
        assert row.params.get("all/all/sparsity", 0.0) in (0.0, 0.25, 0.5)


def test_plan_of_another_model_is_skipped(evaluator):
    from presso.plan import LayerConfig, Plan, QuantConfig

    plan = Plan(layers={"encoder.layer.0.attention.self.query": LayerConfig(quant=QuantConfig(bits=4, group_size=32))})
    with pytest.raises(PressoError, match="covers none"):
        plan_to_params(plan, evaluator.bound)
    same = evaluator.bound.space.base_plan({m: LayerConfig(quant=QuantConfig(bits=4, group_size=32))
                                           for u in evaluator.bound.units for m in u.modules})
    params, mapped = plan_to_params(same, evaluator.bound)
    assert mapped == 0 and all(v == 4 for k, v in params.items() if k.endswith("/bits"))


def test_missing_source_study_fails_before_anything_is_created(tmp_path):
    cfg = config(tmp_path, name="new", warm_start={"from_study": "nope"})
    run_study(config(tmp_path, name="exists", trials=1, warm_start=False), progress=False)
    with pytest.raises(PressoError, match="no study named 'nope'.*'exists'"):
        run_study(cfg, progress=False)
    import optuna

    from presso.search import open_storage

    assert "new" not in optuna.study.get_all_study_names(open_storage(cfg.storage))


def test_cli_warm_start_from(tmp_path, monkeypatch, capsys):
    from presso.cli import main

    monkeypatch.chdir(tmp_path)
    study = {"name": "a", "model": "tiny:llama", "space": "builtin:tiny", "trials": 3, "device": "cpu",
             "tracking_uri": None, "eval": {"sequences": 4, "seq_len": 32}, "warm_start": {"sensitivity": False}}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    assert main(["run", "study.yaml", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["run", "study.yaml", "--study", "b", "--warm-start-from", "a", "--no-progress"]) == 0
    assert "plan(s) from the front of study 'a'" in capsys.readouterr().out
    assert main(["run", "study.yaml", "--study", "c", "--warm-start-from", "missing", "--no-progress"]) == 2
    assert "no study named 'missing'" in capsys.readouterr().err


def test_sensitivity_probes_leave_the_dense_model_untouched(evaluator):
    before = {k: v.clone() for k, v in evaluator.loaded.model.state_dict().items()}
    from presso.search._warmstart import sensitivity_plans

    plans, sensitivity = sensitivity_plans(evaluator, 3)
    assert plans and set(sensitivity) == {f"all/block{b}/{k}" for b in (0, 1) for k in ("prune", "quant")}
    for _, attrs in plans:
        assert attrs["anchor"].startswith(("uniform ", "per-group, at most "))
    after = evaluator.loaded.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.slow
def test_format_space_gets_sensitivity_guided_plans(tmp_path):
    """A space of ggml formats (MiniLM in llama.cpp's formats) is seeded like any other: each unit
    probed at its coarsest format, plans allocated on ggml's own errors; the uniform recipes
    span the space's smallest corner."""
    cfg = config(tmp_path, model="builtin:minilm-l6", space="builtin:minilm-l6-gguf", target="gguf", trials=10,
                 objectives=("embedding_cosine", "size_fraction"), eval=EvalConfig(sequences=8, seq_len=64))
    run_study(cfg, progress=False)
    study = load_existing_study("ws", cfg.storage)
    info = study.user_attrs["warm_start"]
    assert info["counts"].get("sensitivity", 0) >= 1, info["notes"]
    units = {u.param("")[:-1] for u in Evaluator(cfg).bound.units}
    assert set(info["sensitivity"]) == {f"{u}/quant" for u in units}
    rows = [r for r in trial_rows(study) if r.state == "COMPLETE"]
    sens = sorted((r for r in rows if r.user_attrs.get("seeded") == "sensitivity"),
                  key=lambda r: r.user_attrs["predicted_size_fraction"])
    sizes = [r.values["size_fraction"] for r in sens]
    assert sizes == sorted(sizes)  # the size model orders the plans as the files do
    # the smallest uniform recipe (IQ4_NL on the 384-wide rows, Q2_K on the K-quant rows) is a
    # seed: it is also the least-damage plan of its own size, so it may come as a sensitivity plan
    smallest = min(rows, key=lambda r: r.values["size_fraction"])
    assert smallest.user_attrs.get("seeded") in ("uniform", "sensitivity")
    formats = {v for k, v in study.trials[smallest.number].params.items() if k.endswith("/format")}
    assert formats == {"IQ4_NL", "Q2_K"}
