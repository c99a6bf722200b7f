"""The Ray backend: trials on Ray actors, records in the study's SQL store."""

import json
import os
import textwrap

import pytest

from presso.errors import PressoError
from tests.plugin_package import install

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


KILLER = textwrap.dedent('''
    """A test objective that kills its own Ray actor (SIGKILL, as the host's OOM killer would)."""
    import os
    import signal
    from pathlib import Path

    from presso.objectives import BaseObjective, Direction, register_objective

    FAULT_DIR = Path(os.environ["PRESSO_FAULT_DIR"])


    @register_objective
    class KillerSize(BaseObjective):
        """size_fraction, after killing this process: in the study's first two trials, or always
        while the file ``always`` exists."""
        name = "killer_size"
        direction = Direction.MINIMIZE
        unit = "fraction"
        needs_model = False

        def compute(self, model, ctx, trial):
            deaths = len(list(FAULT_DIR.glob("died-*")))
            if (FAULT_DIR / "always").exists() or deaths < 2:
                (FAULT_DIR / f"died-{deaths}").touch()
                os.kill(os.getpid(), signal.SIGKILL)
            return trial.size_bytes / trial.dense_bytes
''')


@pytest.mark.slow
def test_a_killed_ray_actor_loses_its_trial_for_a_retry_then_fails_the_plan(workdir, monkeypatch):
    """A real actor dies mid-trial (SIGKILL): the trial costs no budget and runs again on a fresh
    actor; a plan that kills its actor MAX_LOST_RETRIES times fails, counted, and the study ends."""
    import sys

    import ray

    from presso.objectives import unregister_objective
    from presso.search import load_existing_study, study_from_dict, trial_rows
    from presso.search.ray_backend import MAX_LOST_RETRIES, run_study_ray

    plugins, faults = workdir / "plugins", workdir / "faults"
    faults.mkdir()
    install(plugins, "presso_killer_plugin", {"objectives": KILLER}, "[presso.objectives]\nkiller = presso_killer_plugin.objectives\n")
    # The actors find the plugin through its entry point (Ray's processes inherit this environment);
    # this process imports it, since its plugin scan may have run before the package existed.
    monkeypatch.setenv("PRESSO_FAULT_DIR", str(faults))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(plugins), os.environ.get("PYTHONPATH")])))
    monkeypatch.syspath_prepend(str(plugins))
    import presso_killer_plugin.objectives  # noqa: F401 - registers killer_size here

    url = f"sqlite:///{workdir}/studies.db"
    study = {**STUDY, "storage": url, "max_concurrent": 1, "warm_start": False,
             "space": {**SPACE, "groups": [{**SPACE["groups"][0], "group_size": [32]}]},
             "objectives": ["ppl_ratio", "killer_size"]}
    try:
        once = run_study_ray(study_from_dict({**study, "name": "once", "trials": 2}, base_dir=str(workdir)), progress=False)
        (faults / "always").touch()
        always = run_study_ray(study_from_dict({**study, "name": "always", "trials": 1}, base_dir=str(workdir)),
                               progress=False)
    finally:
        unregister_objective("killer_size")
        for module in ("presso_killer_plugin.objectives", "presso_killer_plugin"):
            sys.modules.pop(module, None)
    assert not ray.is_initialized()

    rows = trial_rows(load_existing_study("once", url))
    lost = [r for r in rows if not r.counted]
    assert once.counted == once.complete == 2 and len(lost) == 2, [(r.state, r.failure) for r in rows]
    assert all(r.state == "FAIL" and "the Ray worker died" in r.user_attrs["lost"] for r in lost)
    for row in lost:  # each lost trial's plan ran again
        assert any(r.user_attrs.get("retry_of") == row.number for r in rows)

    rows = trial_rows(load_existing_study("always", url))
    counted = [r for r in rows if r.counted]
    assert always.counted == always.failed == 1 and len(rows) == MAX_LOST_RETRIES
    assert f"{MAX_LOST_RETRIES} times for this plan" in counted[0].failure


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
