"""The executor conformance suite: every guarantee of a study, tested once and run on every
executor (``local``, ``workers``, ``ray``) with real processes, a real local Ray cluster and the
tiny model: the exact budget, failing trials recorded FAIL while the study goes on, a worker
killed mid-trial, a killed or stopped driver that resumes, multi-fidelity and sensitivity
warm starts. Studies run with ``heartbeat_s=1, grace_s=3`` so lost trials go stale quickly;
the tests poll the store with generous deadlines instead of sleeping fixed times.

The objectives ``slow_size``, ``flaky_size`` and ``killer_size`` are a plugin package written
by these tests and found by every process (workers and Ray actors included) through its
``presso.objectives`` entry point, as an installed plugin would be.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import yaml

from tests.plugin_package import install

PLUGIN = textwrap.dedent('''
    """Test-only objectives (a presso.objectives entry point)."""
    import os
    import time
    from pathlib import Path

    from presso.objectives import BaseObjective, Direction, register_objective

    FAULT_DIR = Path(os.environ["PRESSO_FAULT_DIR"])


    @register_objective
    class SlowSize(BaseObjective):
        """size_fraction; while the file ``slow`` exists a trial marks itself busy and waits for
        the file to go (at most 120 s), so a test can stop it mid-trial at leisure."""
        name = "slow_size"
        direction = Direction.MINIMIZE
        unit = "fraction"
        needs_model = False

        def compute(self, model, ctx, trial):
            if (FAULT_DIR / "slow").exists():
                busy = FAULT_DIR / f"busy-{os.getpid()}"
                busy.touch()
                try:
                    deadline = time.monotonic() + 120
                    while (FAULT_DIR / "slow").exists() and time.monotonic() < deadline:
                        time.sleep(0.05)
                finally:
                    busy.unlink(missing_ok=True)
            return trial.size_bytes / trial.dense_bytes


    @register_objective
    class FlakySize(BaseObjective):
        """size_fraction, except plans whose size is 0 mod 3 give NaN and 1 mod 3 run out of memory."""
        name = "flaky_size"
        direction = Direction.MINIMIZE
        unit = "fraction"
        needs_model = False

        def compute(self, model, ctx, trial):
            import torch

            if trial.size_bytes % 3 == 0:
                return float("nan")
            if trial.size_bytes % 3 == 1:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (test)")
            return trial.size_bytes / trial.dense_bytes


    @register_objective
    class KillerSize(BaseObjective):
        """size_fraction, after killing this process (SIGKILL, as the host's OOM killer would): in
        the study's first two trials, or always while the file ``always`` exists."""
        name = "killer_size"
        direction = Direction.MINIMIZE
        unit = "fraction"
        needs_model = False

        def compute(self, model, ctx, trial):
            import signal

            if trial.number is None:  # the Evaluator's own measurement while it is built
                return trial.size_bytes / trial.dense_bytes
            deaths = len(list(FAULT_DIR.glob("died-*")))
            if (FAULT_DIR / "always").exists() or deaths < 2:
                (FAULT_DIR / f"died-{deaths}").touch()
                os.kill(os.getpid(), signal.SIGKILL)
            return trial.size_bytes / trial.dense_bytes
''')

# How each executor is chosen: study settings (in-process tests) and CLI flags (driver tests).
EXECUTORS = {
    "local": ({}, []),
    "workers": ({"workers": 2}, ["--workers", "2"]),
    "ray": ({"backend": "ray", "max_concurrent": 2, "resources": {"cpus": 1, "gpus": 0}}, ["--backend", "ray"]),
}
ALL = pytest.mark.parametrize("executor", list(EXECUTORS))
REMOTE = pytest.mark.parametrize("executor", ["workers", "ray"])  # where a worker is not the driver

BASE = {
    "model": "tiny:llama",
    "space": "builtin:tiny",
    "objectives": ["ppl_ratio", "slow_size"],
    "sampler": "random",
    "device": "cpu",
    "tracking_uri": None,
    "eval": {"sequences": 2, "seq_len": 16},
    "heartbeat_s": 1,
    "grace_s": 3,
    "warm_start": False,  # no sensitivity probes: the objectives above run in trials only
}
DEADLINE_S = 180  # per wait; a loaded 2-core machine starts a worker in 5-20 s


@pytest.fixture()
def env(tmp_path, monkeypatch):
    """A working folder, the plugin on PYTHONPATH for child processes, and the ``slow`` switch."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    install(plugins, "presso_fault_plugins", {"objectives": PLUGIN},
            "[presso.objectives]\nfaults = presso_fault_plugins.objectives\n")
    faults = tmp_path / "faults"
    faults.mkdir()
    (tmp_path / "tmp").mkdir()  # worker logs of a killed parent stay here, not in /tmp
    monkeypatch.chdir(tmp_path)
    env = dict(os.environ, PRESSO_FAULT_DIR=str(faults), PYTHONUNBUFFERED="1", TMPDIR=str(tmp_path / "tmp"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(plugins), os.environ.get("PYTHONPATH")])))
    return {"dir": tmp_path, "faults": faults, "env": env, "plugins": plugins}


def write_study(env, name, **changes):
    path = env["dir"] / f"{name}.yaml"
    data = {**BASE, "name": name, "storage": f"sqlite:///{env['dir']}/studies.db", **changes}
    path.write_text(yaml.safe_dump(data))
    return str(path)


def start_run(env, study_file, *flags):
    log = open(env["dir"] / f"run-{time.monotonic_ns()}.log", "w+")
    run_env = dict(env["env"])
    if "ray" in flags:
        run_env.pop("TMPDIR")  # Ray's socket paths under a deep TMPDIR exceed the 107-byte limit
    proc = subprocess.Popen([sys.executable, "-m", "presso.cli", "run", study_file, "--no-progress", *flags],
                            env=run_env, stdout=log, stderr=subprocess.STDOUT, text=True)
    proc.log = log
    return proc


def finish(proc, timeout=DEADLINE_S * 2):
    code = proc.wait(timeout=timeout)
    proc.log.seek(0)
    return code, proc.log.read()


def rows_of(env, name):
    from presso.search import load_existing_study, trial_rows

    try:
        return trial_rows(load_existing_study(name, f"sqlite:///{env['dir']}/studies.db"))
    except Exception:  # noqa: BLE001 - not created yet
        return []


def wait_for(what, predicate, proc=None, timeout=DEADLINE_S, every=0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            proc.log.seek(0)
            raise AssertionError(f"the run exited ({proc.returncode}) while waiting for {what}:\n{proc.log.read()[-3000:]}")
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def busy_trial(env, name):
    """``(pid, trial number)`` of a process in the middle of a slow trial, if any (the busy mark
    alone is not enough: an Evaluator may measure its objectives once while it is built)."""
    for path in env["faults"].glob("busy-*"):
        pid = int(path.name.split("-")[1])
        for row in rows_of(env, name):
            if row.state == "RUNNING" and row.plan and str(row.user_attrs.get("worker", "")).endswith(f":{pid}"):
                return pid, row.number
    return None


def alive(pid):
    """Whether ``pid`` still runs (a zombie waiting to be reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def worker_pids(env, name):
    pids = {int(str(r.user_attrs["worker"]).rsplit(":", 1)[1]) for r in rows_of(env, name) if r.user_attrs.get("worker")}
    return pids | {int(p.name.split("-")[1]) for p in env["faults"].glob("busy-*")}


def assert_exact_budget(rows, trials):
    states = {r.state for r in rows}
    assert sum(r.counted for r in rows) == trials, [(r.number, r.state, r.failure) for r in rows]
    assert not states & {"RUNNING", "WAITING"}, states
    assert sorted(r.number for r in rows) == list(range(len(rows)))


@pytest.fixture()
def plugin(env, monkeypatch):
    """The plugin objectives registered in this process too (in-process tests)."""
    from presso.objectives import unregister_objective

    monkeypatch.setenv("PRESSO_FAULT_DIR", str(env["faults"]))
    monkeypatch.setenv("PYTHONPATH", env["env"]["PYTHONPATH"])  # worker processes and Ray actors
    monkeypatch.syspath_prepend(str(env["plugins"]))
    import presso_fault_plugins.objectives  # noqa: F401 - registers the objectives

    yield
    for objective in ("slow_size", "flaky_size", "killer_size"):
        unregister_objective(objective)
    for module in ("presso_fault_plugins.objectives", "presso_fault_plugins"):
        sys.modules.pop(module, None)


def run_here(env, executor, name, **changes):
    """Run a study in this process on ``executor``; returns its summary and stored rows."""
    from presso.search import load_existing_study, run_study, study_from_dict, trial_rows
    from presso.search._executor import make_executor

    url = f"sqlite:///{env['dir']}/studies.db"
    config = study_from_dict({**BASE, **EXECUTORS[executor][0], "name": name, "storage": url, **changes},
                             base_dir=str(env["dir"]))
    follower = Follower()
    summary = run_study(config, progress=False, observers=[follower], executor=make_executor(config, executor))
    return summary, trial_rows(load_existing_study(name, url)), follower


class Follower:
    """An observer like the MLflow tracker: it must see each stored trial once, in one run."""

    def __init__(self):
        self.calls = []

    def on_run_start(self, study, config):
        self.calls.append(("start", None))

    def on_trial_end(self, study, trial):
        self.calls.append(("trial", trial.number))

    def on_files(self, study, trial_number, files):
        self.calls.append(("files", (trial_number, sorted(files))))

    def on_run_end(self, study, status):
        self.calls.append(("end", status))


@ALL
def test_failing_trials_are_recorded_and_the_study_keeps_its_exact_budget(env, plugin, executor):
    summary, rows, follower = run_here(env, executor, f"flaky-{executor}", objectives=["ppl_ratio", "flaky_size"],
                                       trials=12)
    assert_exact_budget(rows, 12)
    assert summary.counted == 12 and summary.failed == sum(r.state == "FAIL" for r in rows)
    failures = [r.failure for r in rows if r.state == "FAIL"]
    assert any("OutOfMemoryError" in f and "CUDA out of memory" in f for f in failures), failures
    assert any("non-finite value nan" in f for f in failures), failures
    assert any(r.state == "COMPLETE" for r in rows), "plans that neither OOM nor NaN should complete"
    assert all(r.user_attrs.get("worker") for r in rows if r.counted), "each trial records where it ran"
    assert follower.calls[0] == ("start", None) and follower.calls[-1] == ("end", "FINISHED")
    assert sorted(n for kind, n in follower.calls if kind == "trial") == sorted(r.number for r in rows)
    # A measured trial's files (its kernel table) come back from the worker to the observers.
    files = [value for kind, value in follower.calls if kind == "files"]
    assert {n for n, names in files if "kernels.json" in names} == {r.number for r in rows if r.state == "COMPLETE"}


@ALL
def test_multi_fidelity_and_sensitivity_warm_starts_work_on_every_executor(env, plugin, executor):
    """The promotion rule reads the study, so the driver decides between a worker's short-text
    look and its full measurement; the sensitivity probes run as a job on a worker."""
    from presso.search import load_existing_study

    summary, rows, _ = run_here(env, executor, f"mf-{executor}", objectives=["ppl_ratio", "size_fraction"],
                                trials=12, eval={"sequences": 8, "seq_len": 32}, warm_start={"sensitivity": True},
                                fidelity={"enabled": True, "warmup": 3, "max_dominated": 0})
    assert_exact_budget(rows, 12)
    info = load_existing_study(f"mf-{executor}", f"sqlite:///{env['dir']}/studies.db").user_attrs["warm_start"]
    assert info["counts"].get("sensitivity", 0) >= 1 and info["sensitivity"], info
    seeded = [r.user_attrs.get("seeded") for r in rows if r.user_attrs.get("seeded")]
    # the warm start's order: sensitivity plans, then the uniform ones not among them already
    assert seeded[0] == "sensitivity" and seeded == sorted(seeded, key=["sensitivity", "uniform"].index), seeded
    pruned = [r for r in rows if r.state == "PRUNED"]
    assert pruned, "max_dominated 0 after a warm-up of 3 should stop some random plans"
    for row in pruned:
        assert row.values == {} and set(row.user_attrs["low_values"]) == {"ppl_ratio", "size_fraction"}
        assert row.user_attrs["promotion"]["promoted"] is False and row.counted and "seeded" not in row.user_attrs
    assert all("low_values" in r.user_attrs for r in rows if r.state == "COMPLETE")
    assert summary.counted == 12


@REMOTE
def test_a_worker_killed_mid_trial_loses_its_trial_for_a_retry_then_fails_the_plan(env, plugin, executor, capfd):
    """A real worker dies mid-trial (SIGKILL): the trial costs no budget and runs again on a fresh
    worker; a plan that kills its worker MAX_LOST_RETRIES times fails, counted, and the study ends."""
    from presso.search._driver import MAX_LOST_RETRIES

    one_at_a_time = {"workers": 1, "max_concurrent": 1}  # deaths counted one by one
    killer = {"objectives": ["ppl_ratio", "killer_size"], "space": KILLER_SPACE, **one_at_a_time}
    once, rows, _ = run_here(env, executor, f"once-{executor}", trials=2, **killer)
    lost = [r for r in rows if not r.counted]
    assert once.counted == once.complete == 2 and len(lost) == 2, [(r.state, r.failure) for r in rows]
    assert all(r.state == "FAIL" and r.failure is None and "died" in r.user_attrs["lost"] for r in lost)
    for row in lost:  # each lost trial's plan ran again
        assert any(r.user_attrs.get("retry_of") == row.number and r.params == row.params for r in rows)
    if executor == "workers":
        assert "worker 0 was killed by SIGKILL" in capfd.readouterr().err

    (env["faults"] / "always").touch()
    always, rows, _ = run_here(env, executor, f"always-{executor}", trials=1, **killer)
    counted = [r for r in rows if r.counted]
    assert always.counted == always.failed == 1 and len(rows) == MAX_LOST_RETRIES
    assert f"{MAX_LOST_RETRIES} times for this plan" in counted[0].failure


# One plan only, so every retry is the same plan and the tiny space costs little.
KILLER_SPACE = {
    "defaults": {"criterion": "magnitude", "calibration_samples": 4, "calibration_seq_len": 32},
    "groups": [{"name": "all", "modules": ["re:.*\\.(\\d+)\\..*"], "tie": "block",
                "sparsity": {"low": 0.0, "high": 0.0, "step": 0.2}, "bits": [8], "group_size": [32]}],
}


@pytest.mark.slow
@ALL
def test_a_killed_driver_resumes_to_exactly_the_budget(env, executor):
    name = f"kill-driver-{executor}"
    flags = EXECUTORS[executor][1]
    study = write_study(env, name, trials=6)
    (env["faults"] / "slow").touch()
    proc = start_run(env, study, *flags)
    pid, _ = wait_for("a trial in progress", lambda: busy_trial(env, name), proc)
    workers = worker_pids(env, name) | {pid}
    proc.kill()
    proc.wait()
    # Workers watch their driver (Ray's processes share its fate): they stop, leaving their
    # trials RUNNING; those go stale once their heartbeats stop and are retried on resume.
    wait_for("the workers to stop", lambda: not any(alive(p) for p in workers), timeout=60)
    (env["faults"] / "slow").unlink()
    code, out = finish(start_run(env, study, *flags))
    assert code == 0, out
    assert "6/6 trials" in out
    rows = rows_of(env, name)
    assert_exact_budget(rows, 6)
    uncounted = [r for r in rows if not r.counted and "cancelled" not in r.user_attrs]
    assert uncounted, "the trial in progress when the driver died should have been failed and retried"


@pytest.mark.slow
@pytest.mark.parametrize("executor,signum", [("local", signal.SIGTERM), ("workers", signal.SIGINT),
                                             ("ray", signal.SIGTERM)])
def test_a_stopped_driver_marks_its_trials_and_resumes(env, executor, signum):
    name = f"stop-{executor}"
    flags = EXECUTORS[executor][1]
    study = write_study(env, name, trials=5)
    (env["faults"] / "slow").touch()
    proc = start_run(env, study, *flags)
    wait_for("a trial in progress", lambda: busy_trial(env, name), proc)
    proc.send_signal(signum)
    code, out = finish(proc)
    assert code == 130, out
    assert "interrupted; run the same command again to resume" in out
    rows = rows_of(env, name)
    interrupted = [r for r in rows if "interrupted" in r.user_attrs]
    assert interrupted and all(r.state == "FAIL" and not r.counted for r in interrupted)
    # NOTE: a driver stopped between asking a trial and starting it leaves it RUNNING; it has a
    # heartbeat, so it goes stale after grace_s and is retried (the exact budget below holds).
    (env["faults"] / "slow").unlink()
    code, out = finish(start_run(env, study, *flags))
    assert code == 0 and "5/5 trials" in out, out
    rows = rows_of(env, name)
    assert_exact_budget(rows, 5)
    for row in interrupted:  # each interrupted trial's plan ran again
        assert any(r.user_attrs.get("retry_of") == row.number for r in rows)


def test_every_executor_is_registered_and_picked_from_the_study_settings():
    from presso.errors import PressoError
    from presso.search import StudyConfig, executors, register_executor
    from presso.search._executor import executor_name, make_executor

    assert executors()[:3] == ["local", "workers", "ray"]
    for name, (settings, _) in EXECUTORS.items():
        assert executor_name(StudyConfig(**settings)) == name
    with pytest.raises(PressoError, match="already registered"):
        register_executor("ray")(object)
    with pytest.raises(PressoError, match=r"got 'nope'; registered: \['local', 'workers', 'ray'"):
        make_executor(StudyConfig(), "nope")


def test_workers_get_the_space_inline_and_no_store_url(tmp_path):
    import json

    from presso.search import study_from_dict
    from presso.search._jobs import worker_study

    config = study_from_dict({"name": "x", "model": "tiny:llama", "space": "builtin:tiny",
                              "storage": "postgresql+psycopg://u:secret@db/optuna"}, base_dir=str(tmp_path))
    data, base_dir, space = worker_study(config)
    assert data["space"] == space and isinstance(space, dict) and "secret" not in json.dumps(data)
    assert data["tracking_uri"] is None and base_dir == str(tmp_path)
