"""Plugins through entry points: a test package installed for the test (a dist-info folder on
PYTHONPATH, so importlib.metadata sees its entry_points.txt) and a real ``presso run``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import yaml

from presso.search import load_existing_study, trial_rows

from .plugin_package import install

SAMPLERS = textwrap.dedent('''
    """A module entry point: importing it registers the sampler."""
    import os

    import optuna

    from presso.search import register_sampler

    LOG = os.environ["PRESSO_PLUGIN_LOG"]


    class LoggingRandomSampler(optuna.samplers.RandomSampler):
        def sample_independent(self, study, trial, param_name, param_distribution):
            with open(LOG, "a") as handle:
                handle.write(f"sample {trial.number} {param_name}\\n")
            return super().sample_independent(study, trial, param_name, param_distribution)


    @register_sampler("plugin_random")
    def _factory(seed, n_objectives):
        with open(LOG, "a") as handle:
            handle.write(f"factory {seed} {n_objectives}\\n")
        return LoggingRandomSampler(seed=seed)
''')

OBJECTIVES = textwrap.dedent('''
    """A function entry point: calling it registers the objective."""
    from presso.objectives import BaseObjective, Direction, Task, register_objective


    def register():
        @register_objective
        class DoubleSize(BaseObjective):
            name = "plugin_double_size"
            direction = Direction.MINIMIZE
            unit = "fraction"
            tasks = (Task.CAUSAL_LM,)

            def compute(self, model, ctx, trial):
                return 2.0 * trial.size_bytes / trial.dense_bytes
''')


def presso_run(tmp_path, plugin_root, **changes):
    study = {
        "name": "plugged", "model": "tiny:llama", "space": "builtin:tiny", "device": "cpu", "trials": 3,
        "objectives": ["ppl_ratio", "plugin_double_size"], "sampler": "plugin_random", "warm_start": False,
        "storage": f"sqlite:///{tmp_path}/studies.db", "eval": {"sequences": 2, "seq_len": 16}, **changes,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    env = dict(os.environ, PRESSO_PLUGIN_LOG=str(tmp_path / "plugin.log"), OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(plugin_root), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-m", "presso.cli", "run", str(path), "--no-progress", "--no-tracking"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("workers", [1, 2])  # 2: worker processes load the plugin too
def test_a_plugin_sampler_and_objective_run_in_presso_run(tmp_path, workers):
    root = install(tmp_path / "site", "presso_test_plugin", {"samplers": SAMPLERS, "objectives": OBJECTIVES}, """
        [presso.samplers]
        plugin_random = presso_test_plugin.samplers

        [presso.objectives]
        plugin_double_size = presso_test_plugin.objectives:register
    """)
    done = presso_run(tmp_path, root, workers=workers)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "with plugin_random" in done.stdout

    log = (tmp_path / "plugin.log").read_text().splitlines()
    assert log[0] == "factory 0 2"  # the study's seed, two objectives
    assert {int(line.split()[1]) for line in log if line.startswith("sample ")} == {0, 1, 2}

    rows = trial_rows(load_existing_study("plugged", f"sqlite:///{tmp_path}/studies.db"))
    assert len(rows) == 3 and all(r.state == "COMPLETE" for r in rows)
    for row in rows:
        expected = 2.0 * row.metrics["size_bytes"] / row.metrics["dense_bytes"]
        assert row.values["plugin_double_size"] == pytest.approx(expected, rel=1e-12)
        assert 0 < row.values["plugin_double_size"] < 2.0


def test_a_broken_plugin_is_named_in_the_error(tmp_path):
    root = install(tmp_path / "site", "presso_broken_plugin", {"objectives": "raise RuntimeError('no licence')\n"}, """
        [presso.objectives]
        licensed = presso_broken_plugin.objectives
    """)
    done = presso_run(tmp_path, root, objectives=["ppl_ratio"], sampler="random")
    assert done.returncode == 2, done.stdout + done.stderr
    assert ("error: plugin entry point 'licensed' in group 'presso.objectives' (presso_broken_plugin.objectives, "
            "from presso-broken-plugin 0.1) failed to load: RuntimeError: no licence") in done.stderr


def test_unknown_plugin_names_are_listed_with_the_registered_ones(tmp_path):
    done = presso_run(tmp_path, tmp_path, objectives=["ppl_ratio"])  # the plugin is not installed here
    assert done.returncode == 2
    assert "study.sampler: got 'plugin_random'" in done.stderr and "'random'" in done.stderr
