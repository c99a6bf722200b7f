"""What a trial stores: its parameters, not its plan; the plan is rebuilt from the study's
space and module names, exactly as it was built when the trial ran. Studies written before
that change (a fixture kept under ``tests/search/data``) still read and export their plans."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
import yaml

from presso.cli import main
from presso.plan import plan_to_dict
from presso.search import load_existing_study, load_study_file, run_study, trial_rows
from presso.search._evaluator import Evaluator
from presso.search._records import MODULES_KEY, plan_source, study_info

EXAMPLES = Path(__file__).parents[2] / "examples"
LEGACY = Path(__file__).parent / "data" / "legacy-study.db"  # `presso run examples/tiny.yaml --trials 3` before the change


@pytest.fixture()
def legacy(tmp_path):
    path = tmp_path / "legacy.db"
    shutil.copy(LEGACY, path)
    return f"sqlite:///{path}"


def test_export_of_a_legacy_study_reproduces_its_stored_plan(legacy, tmp_path, capsys):
    study = optuna.load_study(study_name="legacy", storage=legacy)
    assert MODULES_KEY not in study_info(study)  # written before the plan left the trials
    out = tmp_path / "plan.yaml"
    code = main(["export", "--study", "legacy", "--storage", legacy, "--pick", "min size_fraction", "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    number = int(capsys.readouterr().out.split("trial ")[1].split()[0])
    stored = next(t for t in study.get_trials() if t.number == number).user_attrs["plan"]
    assert yaml.safe_load(out.read_text()) == stored


class Recording:
    """An Evaluator that remembers the plan it was given, by trial order."""

    def __init__(self, inner):
        self.inner, self.plans = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def evaluate(self, plan, *args, **kwargs):
        self.plans.append(plan_to_dict(plan))
        return self.inner.evaluate(plan, *args, **kwargs)


def _tiny(url, name="new", trials=4):
    """The study of examples/tiny.yaml (which wrote the fixture), in ``url``."""
    config = load_study_file(str(EXAMPLES / "tiny.yaml")).with_overrides(name=name, storage=url, trials=trials)
    return replace(config, tracking_uri=None)


def test_new_trials_store_params_and_rebuild_the_evaluated_plan(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    config = _tiny(url)
    evaluator = Recording(Evaluator(config))
    run_study(config, progress=False, evaluator=evaluator)
    study = load_existing_study("new", url)
    trials = sorted(study.get_trials(), key=lambda t: t.datetime_start)
    assert len(trials) == 4 and all("plan" not in t.user_attrs for t in trials)
    rebuild = plan_source(study_info(study))
    ran = evaluator.plans[-4:]  # before them: the warm start's sensitivity probes
    assert [rebuild(t.params) for t in trials] == ran
    assert [r.plan for r in sorted(trial_rows(study), key=lambda r: r.datetime_start)] == ran
    # What a trial keeps is small: values, metrics, timings, worker, warm-start notes.
    assert max(len(json.dumps(t.user_attrs)) for t in trials) < 1000


def test_a_resumed_legacy_study_reads_both_forms(legacy, tmp_path):
    # A study resumes only on its own space: the fixture's is the tiny space of its day.
    stored = optuna.load_study(study_name="legacy", storage=legacy).user_attrs["presso"]["space"]
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(stored))
    config = replace(_tiny(legacy, name="legacy", trials=5), space=str(space))
    run_study(config, progress=False, max_trials_here=2)
    study = load_existing_study("legacy", legacy)
    assert MODULES_KEY in study_info(study)
    trials = {t.number: t for t in study.get_trials()}
    rows = {r.number: r for r in trial_rows(study)}
    old = [n for n, t in trials.items() if "plan" in t.user_attrs]
    new = [n for n, t in trials.items() if t.state.is_finished() and "plan" not in t.user_attrs]
    assert len(old) == 3 and len(new) == 2
    assert all(rows[n].plan == trials[n].user_attrs["plan"] for n in old)
    assert all(rows[n].plan["_type"] == "Plan" for n in new)
    # The stored plans are what the rebuild gives, so both forms agree.
    rebuild = plan_source(study_info(study))
    assert all(rebuild(trials[n].params) == trials[n].user_attrs["plan"] for n in old)


def _synthetic(url, n, start=0, seed=0):
    """``n`` trials of every kind the index tells apart, written with Optuna's own API."""
    import random

    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    study = optuna.create_study(study_name="synthetic", storage=url, directions=["minimize", "minimize"],
                                load_if_exists=True)
    if not study.user_attrs:
        study.set_user_attr("presso", {"objectives": [{"name": "a", "direction": "minimize"},
                                                      {"name": "b", "direction": "minimize"}]})
    rng = random.Random(seed)
    for i in range(start, start + n):
        kind = i % 7
        a, b = rng.random(), rng.random()
        attrs, system = {}, {"constraints:a <= 0.9": a - 0.9}
        state, values = TrialState.COMPLETE, None
        if kind == 1:
            state, attrs = TrialState.FAIL, {"failure": "bad plan"}
        elif kind == 2:
            state, attrs = TrialState.FAIL, {"interrupted": "stopped"}
        elif kind == 3:
            state, attrs = TrialState.PRUNED, {"cancelled": "surplus"}
        elif kind == 4:
            state, attrs = TrialState.PRUNED, {"low_values": {"a": a}}
        else:
            attrs, values = {"values": {"a": a, "b": b}}, [a, b]
        study.add_trial(create_trial(state=state, values=values, params={"x": a},
                                     distributions={"x": FloatDistribution(0, 1)}, user_attrs=attrs, system_attrs=system))
    study.enqueue_trial({"x": 0.5})
    return study


def _by_full_read(study):
    from collections import Counter

    from presso.search._index import _category

    rows = trial_rows(study)
    from presso.search._records import pareto_rows

    return Counter(_category(r) for r in rows), sum(r.counted for r in rows), {r.number for r in pareto_rows(study, rows)}


def test_the_index_agrees_with_a_full_read_and_stays_right_incrementally(tmp_path):
    from presso.search._index import StudyIndex

    url = f"sqlite:///{tmp_path}/s.db"
    study = _synthetic(url, 60)
    index = StudyIndex(study).refresh()
    counts, counted, front = _by_full_read(study)
    assert (index.counts(), index.counted, {r.number for r in index.front}) == (counts, counted, front)
    assert index.waiting == 1 and index.floor == 60  # only the queued trial (number 60) is read again
    assert counts["RETRIED"] and counts["CANCELLED"] and counts["PRUNED"] and counts["FAIL"]
    study = _synthetic(url, 30, start=61, seed=1)  # more trials, the queued one still waiting
    index.refresh()
    counts, counted, front = _by_full_read(study)
    assert (index.counts(), index.counted, {r.number for r in index.front}) == (counts, counted, front)
    assert index.ahead_of(200) == counted + 2  # two queued trials
    rows = trial_rows(study)
    for number in (10, 61, 75):
        assert index.ahead_of(number) == sum(r.number < number and (r.counted or r.state == "WAITING") for r in rows)


def test_ask_pops_queued_trials_in_order_without_reading_the_study(tmp_path):
    from presso.search._driver import ask

    url = f"sqlite:///{tmp_path}/s.db"
    study = _synthetic(url, 40)  # 40 finished trials, then one queued: {"x": 0.5}
    study.enqueue_trial({"x": 0.25})
    other = optuna.load_study(study_name="synthetic", storage=url)  # another worker claims the first queued one
    assert other.ask().params == {} and other.trials[-2].state.name == "RUNNING"
    mine = optuna.load_study(study_name="synthetic", storage=url)
    trial = ask(mine)
    assert trial.number == 41 and trial.suggest_float("x", 0, 1) == 0.25
    # Only the claimed trial entered Optuna's cache (study.ask() would have read all 42).
    assert list(mine._storage._studies[mine._study_id].trials) == [41]
    mine.tell(trial, [0.1, 0.2])
    fresh = ask(mine)  # nothing queued any more: a new trial
    assert fresh.number == 42 and fresh.params == {}
    assert [t.number for t in mine.get_trials() if t.state.name == "COMPLETE"][-1] == 41
