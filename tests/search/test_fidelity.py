"""Multi-fidelity: the promotion rule, the evaluator's short-text look, and how stopped trials
are stored (PRUNED with their low-fidelity values, counted in the budget, never on the front)."""

import optuna
import pytest
import torch

from presso.errors import PressoError
from presso.search import EvalConfig, Evaluator, StudyConfig, load_existing_study, run_study, study_from_dict
from presso.search._config import FidelityConfig
from presso.search._evaluator import ObjectiveSpec
from presso.search._fidelity import Promoter
from presso.search._records import pareto_rows, trial_rows
from presso.search._results import status_counts
from presso.search.optuna_space import suggest

SPECS = [ObjectiveSpec("ppl_ratio", "minimize", "ratio"), ObjectiveSpec("size_fraction", "minimize", "fraction")]


def config(tmp_path, **changes) -> StudyConfig:
    base = dict(name="mf", model="tiny:llama", space="builtin:tiny", trials=8, device="cpu", sampler="random",
                storage=f"sqlite:///{tmp_path}/studies.db", tracking_uri=None, eval=EvalConfig(sequences=8, seq_len=32))
    return StudyConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory):
    return Evaluator(config(tmp_path_factory.mktemp("ev"), fidelity={"enabled": True, "fraction": 0.25}))


def _study_with(points):
    study = optuna.create_study(directions=["minimize", "minimize"])
    dist = optuna.distributions.FloatDistribution(0, 1)
    for ppl, size in points:
        study.add_trial(optuna.trial.create_trial(
            values=[ppl, size], params={"x": 0.5}, distributions={"x": dist},
            user_attrs={"low_values": {"ppl_ratio": ppl, "size_fraction": size}}))
    return study


def test_fidelity_setting_validation():
    assert not StudyConfig().fidelity.enabled
    assert StudyConfig(fidelity=True).fidelity == FidelityConfig(enabled=True)
    parsed = study_from_dict({"fidelity": {"enabled": True, "fraction": 0.5, "max_dominated": 0}}).fidelity
    assert parsed.fraction == 0.5 and parsed.max_dominated == 0
    for bad, words in [({"fidelity": {"fraction": 1.0}}, "a fraction in"), ({"fidelity": {"max_dominated": -1}}, ">= 0"),
                       ({"fidelity": {"enable": True}}, "did you mean 'enabled'"), ({"fidelity": "on"}, "true, false")]:
        with pytest.raises(PressoError, match=words):
            study_from_dict(bad)


def test_promoter_counts_dominating_low_fidelity_points():
    study = _study_with([(1.0, 0.5), (1.1, 0.4), (1.2, 0.3), (2.0, 0.9)])
    promote = Promoter(study, FidelityConfig(enabled=True, max_dominated=1, warmup=2), SPECS)
    assert promote({"ppl_ratio": 1.05, "size_fraction": 0.35})  # on the front: dominated by none
    assert promote.decision["dominated_by"] == 0 and promote.decision["compared_with"] == 4
    assert promote({"ppl_ratio": 1.15, "size_fraction": 0.45})  # dominated by one (1.1, 0.4)
    assert not promote({"ppl_ratio": 1.3, "size_fraction": 0.6})  # dominated by three
    assert promote.decision == {"dominated_by": 3, "compared_with": 4, "max_dominated": 1, "warmup": False,
                                "promoted": False}
    warming = Promoter(study, FidelityConfig(enabled=True, max_dominated=0, warmup=5), SPECS)
    assert warming({"ppl_ratio": 9.0, "size_fraction": 0.99})  # fewer finished trials than warmup


def test_low_fidelity_look_uses_a_quarter_of_the_sequences(evaluator):
    assert evaluator.context.input_ids.shape[0] == 8
    assert evaluator.low_context.input_ids.shape[0] == 2
    assert torch.equal(evaluator.low_context.input_ids, evaluator.context.input_ids[:2])


def test_promoted_plan_gets_the_full_measurement_of_the_same_compressed_model(evaluator):
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=1))
    plan = suggest(study.ask(), evaluator.bound, model="tiny:llama")
    plain = evaluator.evaluate(plan)
    seen = []
    promoted = evaluator.evaluate(plan, promote=lambda low: seen.append(low) or True)
    stopped = evaluator.evaluate(plan, promote=lambda low: False)
    assert promoted.values == plain.values and promoted.fidelity == "full"
    assert promoted.low_values == seen[0] == stopped.values == stopped.low_values
    assert stopped.fidelity == "low" and plain.low_values is None
    assert stopped.timings["evaluate_s"] == stopped.timings["low_evaluate_s"]


def test_reused_work_model_gives_the_same_values_and_keeps_the_dense_model(evaluator):
    before = {k: v.clone() for k, v in evaluator.loaded.model.state_dict().items()}
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=2))
    plans = [suggest(study.ask(), evaluator.bound, model="tiny:llama") for _ in range(3)]
    first = [evaluator.evaluate(p).values for p in plans]
    again = [evaluator.evaluate(p).values for p in reversed(plans)][::-1]
    assert first == again
    after = evaluator.loaded.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_study_with_multi_fidelity_stores_stopped_trials_honestly(tmp_path):
    cfg = config(tmp_path, trials=12, warm_start={"sensitivity": False},
                 fidelity={"enabled": True, "warmup": 3, "max_dominated": 0})
    summary = run_study(cfg, progress=False)
    study = load_existing_study("mf", cfg.storage)
    rows = trial_rows(study)
    pruned = [r for r in rows if r.state == "PRUNED"]
    complete = [r for r in rows if r.state == "COMPLETE"]
    assert summary.counted == 12 == len(pruned) + len(complete)
    assert summary.complete == len(complete)
    assert pruned, "max_dominated 0 after a warm-up of 3 should stop some random plans"
    for row in pruned:
        assert row.values == {} and set(row.user_attrs["low_values"]) == {"ppl_ratio", "size_fraction"}
        assert row.user_attrs["promotion"]["promoted"] is False and row.counted
    for row in complete:
        assert "low_values" in row.user_attrs  # kept for like-for-like comparisons
    front = {r.number for r in pareto_rows(study)}
    assert front and not front & {r.number for r in pruned}
    assert status_counts(study)["PRUNED"] == len(pruned)
