"""The Ray executor: trials on Ray actors, records in the study's SQL store. Its fault and
resume guarantees are in test_executor_conformance.py, with the other executors'."""

import json

import pytest

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
    capsys.readouterr()
    assert not ray.is_initialized(), "the local cluster this run started must be shut down"
    study = load_existing_study("on-ray", url)
    rows = trial_rows(study)
    # Sensitivity probes need the model: they ran as a job on an actor.
    warm = study.user_attrs["warm_start"]
    assert "sensitivity" in warm["seconds"], warm
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


@pytest.mark.slow
@pytest.mark.timeout(300, method="thread")  # a hang in ray.get: the signal method cannot stop it
def test_a_pool_larger_than_the_cluster_holds_only_the_actors_that_fit(workdir, capsys):
    """Two 1-CPU actors asked of a 1-CPU cluster: the second could never start, and the study
    waited for it forever (a Ray Job on a 1-CPU head did). The pool now holds the one that fits."""
    import ray

    from presso.search import load_existing_study, study_from_dict, trial_rows
    from presso.search.ray_backend import run_study_ray

    url = f"sqlite:///{workdir}/studies.db"
    config = study_from_dict({**STUDY, "name": "small-cluster", "storage": url, "trials": 3}, base_dir=str(workdir))
    ray.init(num_cpus=1, include_dashboard=False)
    try:
        summary = run_study_ray(config, progress=False)
    finally:
        ray.shutdown()
    assert "so 1 of the 2 concurrent trials" in capsys.readouterr().out
    rows = trial_rows(load_existing_study("small-cluster", url))
    assert summary.counted == len(rows) == 3 and not summary.interrupted
    assert len({r.user_attrs["worker"] for r in rows}) == 1
