"""The Ray backend: trials on Ray actors, records in the study's SQL store."""

import json

import pytest

from presso.errors import PressoError

# group_size 48 does not divide the tiny model's widths (64, 128): such plans fail on the
# workers, and must fail alone, recorded like any failed trial.
SPACE = {
    "defaults": {"criterion": "magnitude", "calibration_samples": 4, "calibration_seq_len": 32},
    "groups": [{"name": "all", "modules": ["re:.*\\.(\\d+)\\..*"], "tie": "block",
                "sparsity": {"low": 0.0, "high": 0.6, "step": 0.2}, "bits": [4, 8], "group_size": [32, 48]}],
}
STUDY = {
    "model": "tiny:llama",
    "space": SPACE,
    "objectives": ["ppl_ratio", "size_fraction"],
    "sampler": "random",
    "device": "cpu",
    "tracking_uri": None,
    "eval": {"sequences": 2, "seq_len": 16},
    "backend": "ray",
    "max_concurrent": 2,
    "resources": {"cpus": 1, "gpus": 0},
}


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _overlap(rows) -> bool:
    spans = sorted((r.datetime_start, r.datetime_complete) for r in rows if r.datetime_complete)
    return any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:]))


@pytest.mark.slow
def test_a_study_on_a_local_ray_cluster(workdir, capsys):
    import ray

    from presso.cli import main
    from presso.search import load_existing_study, study_from_dict, trial_rows
    from presso.search.ray_backend import run_study_ray

    url = f"sqlite:///{workdir}/studies.db"
    config = study_from_dict({**STUDY, "name": "on-ray", "storage": url, "trials": 10}, base_dir=str(workdir))
    ends = []

    class Follower:
        def on_trial_end(self, study, trial):
            ends.append(trial.number)

        def on_run_start(self, study, config):
            pass

        def on_run_end(self, study, status):
            ends.append(status)

    summary = run_study_ray(config, observers=[Follower()], progress=False)
    assert "sensitivity-guided warm-start plans need the model" in capsys.readouterr().out
    assert not ray.is_initialized(), "the local cluster this run started must be shut down"
    rows = trial_rows(load_existing_study("on-ray", url))
    counted = [r for r in rows if r.counted]
    assert summary.counted == len(counted) == 10 and not summary.interrupted
    assert not {r.state for r in rows} & {"RUNNING", "WAITING"}
    failed = [r for r in counted if r.state == "FAIL"]
    complete = [r for r in counted if r.state == "COMPLETE"]
    assert complete and summary.complete == len(complete) and summary.failed == len(failed)
    assert all("group_size" in r.failure and "48" in r.failure for r in failed)
    # The same records as the local backend.
    for row in complete:
        assert set(row.values) == {"ppl_ratio", "size_fraction"} and row.plan["_type"] == "Plan"
        assert {"compress_s", "evaluate_s", "total_s"} <= set(row.timings) and "size_bytes" in row.metrics
    # Two actors, each built its Evaluator once and served several trials, two at a time.
    workers = {r.user_attrs["worker"] for r in counted}
    assert len(workers) == 2, workers
    assert _overlap(counted), "trials never ran concurrently"
    assert sorted(n for n in ends if isinstance(n, int)) == sorted(r.number for r in counted) and ends[-1] == "FINISHED"
    # status / pareto / export read it like any study.
    assert main(["pareto", "--study", "on-ray", "--storage", url, "--format", "json"]) == 0
    front = json.loads(capsys.readouterr().out)
    assert front and {"number", "values", "plan"} <= set(front[0])
    assert main(["export", "--study", "on-ray", "--storage", url, "--pick", "min size_fraction", "-o", "p.yaml"]) == 0
    assert main(["status", "--study", "on-ray", "--storage", url]) == 0
    assert "complete" in capsys.readouterr().out


class _FakeSlot:
    def __init__(self, name):
        self.handle, self.where = name, f"host:{name}"


class _FakePool:
    def __init__(self):
        self.replaced = 0

    def replace(self, slot):
        self.replaced += 1
        return _FakeSlot(f"fresh{self.replaced}")


def test_a_dead_ray_worker_loses_its_trial_for_a_retry_then_fails_the_plan(monkeypatch):
    """A worker that dies (host OOM killer, lost node) costs no budget: its trial is retried on a
    fresh actor; a plan that kills its worker three times fails (counted)."""
    import time

    import optuna
    import ray

    from presso.search._records import row_from_trial
    from presso.search.ray_backend import MAX_LOST_RETRIES, _finish, _InFlight

    def dead(ref):
        raise ray.exceptions.ActorDiedError()

    monkeypatch.setattr(ray, "get", dead)
    study = optuna.create_study()
    distributions = {"x": optuna.distributions.FloatDistribution(0, 1)}
    study.enqueue_trial({"x": 0.5})
    pool = _FakePool()
    for attempt in range(1, MAX_LOST_RETRIES + 1):
        trial = study.ask(distributions)
        frozen, slot, files = _finish(study, pool, _InFlight(trial, _FakeSlot("old"), time.perf_counter()), "ref", None)
        assert files == {}  # a lost trial has no report
        row = row_from_trial(frozen)
        assert slot.handle == f"fresh{attempt}" and frozen.params == {"x": 0.5}
        if attempt < MAX_LOST_RETRIES:
            assert row.state == "FAIL" and not row.counted and "the Ray worker died" in row.user_attrs["lost"]
            waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
            assert [t.user_attrs["lost_retries"] for t in waiting] == [attempt]
        else:
            assert row.counted and "3 times for this plan" in row.failure
            assert not study.get_trials(states=(optuna.trial.TrialState.WAITING,))


def test_the_actors_get_the_space_inline_and_no_store_url(workdir):
    from presso.search import study_from_dict
    from presso.search.ray_backend import _actor_study

    config = study_from_dict({**STUDY, "name": "x", "storage": "postgresql+psycopg://u:secret@db/optuna"},
                             base_dir=str(workdir))
    data, base_dir = _actor_study(config, {"inline": True})
    assert data["space"] == {"inline": True} and "secret" not in json.dumps(data)
    assert data["tracking_uri"] is None and base_dir == str(workdir)


def test_multi_fidelity_is_refused_on_ray_before_a_cluster_starts(workdir):
    import ray

    from presso.search import study_from_dict
    from presso.search.ray_backend import run_study_ray

    config = study_from_dict({**STUDY, "name": "mf", "storage": f"sqlite:///{workdir}/s.db",
                              "fidelity": {"enabled": True}}, base_dir=str(workdir))
    with pytest.raises(PressoError, match="multi-fidelity"):
        run_study_ray(config, progress=False)
    assert not ray.is_initialized()
