import optuna
import pytest

from presso.search import (
    EvalConfig,
    StudyConfig,
    make_sampler,
    register_sampler,
    run_study,
    sampler_names,
    suggest,
    trial_rows,
    unregister_sampler,
)
from presso.search import load_existing_study
from presso.spaces import SearchSpace
from presso.errors import PressoError

NAMES = [f"model.layers.{i}.mlp.{p}" for i in range(2) for p in ("up_proj", "down_proj")]
SPACE = SearchSpace.from_dict({"groups": [{
    "name": "mlp", "modules": ["model.layers.*.mlp.*"], "tie": "block",
    "sparsity": {"low": 0.0, "high": 0.6, "step": 0.1}, "bits": [4, 8, 16], "group_size": [32, 64],
    "rank": {"low": 0, "high": 16, "step": 8},
}]})


def hand_written(trial):
    """The same space written directly against Optuna."""
    out = {}
    for block in (0, 1):
        prefix = f"mlp/block{block}"
        out[f"{prefix}/sparsity"] = trial.suggest_float(f"{prefix}/sparsity", 0.0, 0.6, step=0.1)
        bits = trial.suggest_categorical(f"{prefix}/bits", [4, 8, 16])
        out[f"{prefix}/bits"] = bits
        if bits != 16:
            out[f"{prefix}/group_size"] = trial.suggest_categorical(f"{prefix}/group_size", [32, 64])
        out[f"{prefix}/rank"] = trial.suggest_int(f"{prefix}/rank", 0, 16, step=8)
    return out


def test_converted_space_matches_hand_written_optuna_space():
    bound = SPACE.bind(NAMES)
    converted = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=3, n_startup_trials=4))
    manual = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=3, n_startup_trials=4))
    for _ in range(8):
        a, b = converted.ask(), manual.ask()
        plan = suggest(a, bound)
        assert a.params == hand_written(b)
        converted.tell(a, plan.layers[NAMES[0]].sparsity.amount)
        manual.tell(b, b.params["mlp/block0/sparsity"])
        for i, name in enumerate(NAMES):
            cfg = plan.layers[name]
            prefix = f"mlp/block{i // 2}"
            assert cfg.quant.bits == a.params[f"{prefix}/bits"]
            assert cfg.adapter.rank == a.params[f"{prefix}/rank"]


def test_every_sampler_builds_for_two_objectives():
    # The registry is the list: every registered sampler must build, and the builtins are in it.
    assert {"nsga2", "tpe", "gp", "random", "uniform", "evo"} <= set(sampler_names())
    for name in sampler_names():
        assert isinstance(make_sampler(name, 0, 2), optuna.samplers.BaseSampler)
    with pytest.raises(PressoError, match=r"sampler: got 'nsga' \(did you mean 'nsga2'\?\)"):
        make_sampler("nsga", 0, 2)


@pytest.mark.parametrize("sampler", ["gp", "tpe", "uniform"])
def test_samplers_run_a_tiny_study(tmp_path, sampler):
    config = StudyConfig(
        name=f"s-{sampler}", model="tiny:llama", space="builtin:tiny", trials=4, device="cpu", sampler=sampler,
        storage=f"sqlite:///{tmp_path}/s.db", tracking_uri=None, eval=EvalConfig(sequences=2, seq_len=16),
    )
    summary = run_study(config, progress=False)
    assert summary.counted == 4
    rows = trial_rows(load_existing_study(config.name, config.storage))
    assert all(r.state == "COMPLETE" and r.plan for r in rows)
    if sampler == "uniform":
        # every trial is a uniform plan: one (bits, sparsity) for all modules
        for r in rows:
            layers = r.plan["_data"]["layers"].values()
            assert len({(c["quant"]["bits"], c["sparsity"]["amount"]) for c in layers}) == 1


class _CountingSampler(optuna.samplers.RandomSampler):
    calls = 0

    def sample_independent(self, study, trial, param_name, param_distribution):
        type(self).calls += 1
        return super().sample_independent(study, trial, param_name, param_distribution)


def test_registered_sampler_is_accepted_by_the_config_and_used_by_a_study(tmp_path):
    with pytest.raises(PressoError, match=r"study.sampler: got 'counting_test'; allowed: \[.*'evo'"):
        StudyConfig(sampler="counting_test")
    seen = []

    @register_sampler("counting_test")
    def _factory(seed, n_objectives):
        seen.append((seed, n_objectives))
        return _CountingSampler(seed=seed)

    try:
        config = StudyConfig(
            name="s-plugin", model="tiny:llama", space="builtin:tiny", trials=3, device="cpu",
            sampler="counting_test", warm_start=False, storage=f"sqlite:///{tmp_path}/s.db", tracking_uri=None,
            eval=EvalConfig(sequences=2, seq_len=16),
        )
        _CountingSampler.calls = 0
        assert run_study(config, progress=False).counted == 3
        assert seen and seen[0] == (0, 2)
        assert _CountingSampler.calls > 0
    finally:
        unregister_sampler("counting_test")
    assert "counting_test" not in sampler_names()


def test_study_objectives_are_checked_against_the_objective_registry():
    from presso.objectives import BaseObjective, Direction, Task, register_objective, unregister_objective

    with pytest.raises(PressoError, match=r"study.objectives: got 'perplexty' \(did you mean 'perplexity'\?\); "
                                          r"registered objectives: .*size_fraction"):
        StudyConfig(objectives=["perplexty", "size_fraction"])
    with pytest.raises(PressoError, match="study.objectives: got 'zero_test'"):
        StudyConfig(objectives=["zero_test"])

    @register_objective
    class _Zero(BaseObjective):
        name = "zero_test"
        direction = Direction.MINIMIZE
        unit = ""
        tasks = (Task.CAUSAL_LM,)

        def compute(self, model, ctx, trial):
            return 0.0

    try:
        assert StudyConfig(objectives=["zero_test"]).objectives == ("zero_test",)
    finally:
        unregister_objective("zero_test")
