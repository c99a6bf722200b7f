"""Faults with real processes: killed workers and drivers, trials that run out of memory or
produce NaN. Studies run with ``heartbeat_s=1, grace_s=3`` so lost trials go stale quickly;
the tests poll the store with generous deadlines instead of sleeping fixed times.

The objectives ``slow_size`` and ``flaky_size`` are a plugin package written by these tests
and found by every process (workers included) through its ``presso.objectives`` entry point,
as an installed plugin would be.
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
''')

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


@pytest.mark.slow
def test_a_worker_killed_mid_trial_is_failed_within_grace_and_retried(env):
    name = "kill-worker"
    (env["faults"] / "slow").touch()
    proc = start_run(env, write_study(env, name, trials=6), "--workers", "2")
    pid, number = wait_for("a worker in a trial", lambda: busy_trial(env, name), proc)
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    (env["faults"] / "slow").unlink()

    def failed():
        row = next(r for r in rows_of(env, name) if r.number == number)
        return row.state == "FAIL"

    wait_for("the killed trial to fail", failed, proc)
    # Stale once its last beat is grace_s old (beats every heartbeat_s); found within a poll.
    assert time.monotonic() - killed_at < BASE["grace_s"] + BASE["heartbeat_s"] + 10
    code, out = finish(proc)
    assert code == 0, out
    assert "worker 0 was killed by SIGKILL" in out or "worker 1 was killed by SIGKILL" in out
    rows = rows_of(env, name)
    assert_exact_budget(rows, 6)
    lost = next(r for r in rows if r.number == number)
    assert lost.state == "FAIL" and lost.failure is None and not lost.counted
    retries = [r for r in rows if r.number > number and r.params == lost.params and r.counted]
    assert retries, "the lost trial's plan was not run again"


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["local-sigkill", "workers-sigkill"])
def test_a_killed_driver_resumes_to_exactly_the_budget(env, mode):
    name = f"kill-driver-{mode}"
    flags = ["--workers", "2"] if mode == "workers-sigkill" else []
    study = write_study(env, name, trials=6)
    (env["faults"] / "slow").touch()
    proc = start_run(env, study, *flags)
    pid, _ = wait_for("a trial in progress", lambda: busy_trial(env, name), proc)
    workers = worker_pids(env, name) | {pid} if flags else set()
    proc.kill()
    proc.wait()
    if flags:
        # Workers watch their parent: they record their trials as interrupted and exit.
        wait_for("the workers to stop", lambda: not any(alive(p) for p in workers), timeout=60)
    (env["faults"] / "slow").unlink()
    code, out = finish(start_run(env, study, *flags))
    assert code == 0, out
    assert "6/6 trials" in out
    rows = rows_of(env, name)
    assert_exact_budget(rows, 6)
    uncounted = [r for r in rows if not r.counted and "cancelled" not in r.user_attrs]
    assert uncounted, "the trial in progress when the driver died should have been failed and retried"
    if flags:
        assert any("interrupted" in r.user_attrs for r in uncounted)


@pytest.mark.slow
@pytest.mark.parametrize("signum,flags", [(signal.SIGTERM, []), (signal.SIGINT, ["--workers", "2"]),
                                          (signal.SIGTERM, ["--backend", "ray"])],
                         ids=["sigterm-local", "ctrl-c-workers", "sigterm-ray"])
def test_a_stopped_driver_marks_its_trials_and_resumes(env, signum, flags):
    name = f"stop-{signum.name}-{len(flags)}"
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
    # NOTE: a worker stopped between asking a trial and starting it leaves it RUNNING; it has a
    # heartbeat, so it goes stale after grace_s and is retried (the exact budget below holds).
    (env["faults"] / "slow").unlink()
    code, out = finish(start_run(env, study, *flags))
    assert code == 0 and "5/5 trials" in out, out
    rows = rows_of(env, name)
    assert_exact_budget(rows, 5)
    for row in interrupted:  # each interrupted trial's plan ran again
        assert any(r.user_attrs.get("retry_of") == row.number for r in rows)


def test_out_of_memory_and_nan_trials_fail_alone(env, monkeypatch):
    """In one process: the plugin module is imported here."""
    from presso.objectives import unregister_objective
    from presso.search import load_existing_study, run_study, study_from_dict, trial_rows

    monkeypatch.setenv("PRESSO_FAULT_DIR", str(env["faults"]))
    monkeypatch.syspath_prepend(str(env["plugins"]))
    import presso_fault_plugins.objectives  # noqa: F401 - registers the objectives

    try:
        url = f"sqlite:///{env['dir']}/studies.db"
        config = study_from_dict({**BASE, "name": "flaky", "objectives": ["ppl_ratio", "flaky_size"],
                                  "storage": url, "trials": 12}, base_dir=str(env["dir"]))
        summary = run_study(config, progress=False)
        rows = trial_rows(load_existing_study("flaky", url))
    finally:
        for objective in ("slow_size", "flaky_size"):
            unregister_objective(objective)
        for module in ("presso_fault_plugins.objectives", "presso_fault_plugins"):
            sys.modules.pop(module, None)
    assert_exact_budget(rows, 12)
    assert summary.counted == 12 and summary.failed == sum(r.state == "FAIL" for r in rows)
    failures = [r.failure for r in rows if r.state == "FAIL"]
    assert any("OutOfMemoryError" in f and "CUDA out of memory" in f for f in failures), failures
    assert any("non-finite value nan" in f for f in failures), failures
    assert any(r.state == "COMPLETE" for r in rows), "plans that neither OOM nor NaN should complete"
