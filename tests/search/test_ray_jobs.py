"""A Ray Jobs submission, as the README documents it: `ray job submit -- presso run ...
--backend ray --ray-address auto` against a real local head started with its dashboard.

The head is this test's own: every port is given (the worker port range apart from the
single ports, which `ray start` checks), its temp dir is private, and only its processes
are stopped afterwards. Every wait has a deadline, and a job that does not end in time
fails with its logs and the cluster's pending resource demands.
"""

import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "examples" / "tiny.yaml"
# Full paths: the job's entrypoint runs in a shell under the head's environment, whose PATH
# need not hold this venv.
RAY = str(Path(sys.executable).with_name("ray"))
PRESSO = str(Path(sys.executable).with_name("presso"))
TRIALS = 3
JOB_DEADLINE_S = 180  # the job takes about 35 s on 2 shared cores
SINGLE_PORTS = ("port", "dashboard-port", "ray-client-server-port", "dashboard-agent-listen-port",
                "dashboard-agent-grpc-port", "node-manager-port", "object-manager-port",
                "metrics-export-port", "runtime-env-agent-port")
WORKER_PORTS = 200


def _is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("", port))
        except OSError:
            return False
    return True


def _ports() -> tuple[dict[str, int], range]:
    """Free ports below the ephemeral range (32768+): the single ones in 20000-24999 and the
    workers' range in 25000-31999, so the two never overlap. Random starts keep two heads on
    one machine apart."""
    pick = random.Random()
    for _ in range(50):
        start = pick.randrange(25000, 32000 - WORKER_PORTS)
        workers = range(start, start + WORKER_PORTS)
        if all(_is_free(p) for p in workers):
            break
    else:
        raise RuntimeError("no free block of worker ports in 25000-31999")
    singles: dict[str, int] = {}
    candidates = list(range(20000, 25000))
    pick.shuffle(candidates)
    for port in candidates:
        if len(singles) == len(SINGLE_PORTS):
            break
        if _is_free(port):
            singles[SINGLE_PORTS[len(singles)]] = port
    assert len(singles) == len(SINGLE_PORTS), "not enough free ports in 20000-24999"
    return singles, workers


def _head_processes(group: int):
    """The processes of this head, never another cluster's: `ray start`'s process group (its
    GCS, raylet, dashboard and agents) and everything they started (workers and the job's
    driver call setpgrp or setsid, so they are found as the raylet's descendants)."""
    import psutil

    found = {}
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == group:
                found[proc.pid] = proc
                found.update((child.pid, child) for child in proc.children(recursive=True))
        except (OSError, psutil.Error):
            continue
    return [proc for proc in found.values() if _running(proc)]


def _running(proc) -> bool:
    import psutil

    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _stop_head(group: int) -> list[str]:
    """`ray stop --force` for this head only (`ray stop` takes no address or temp dir and kills
    every Ray process on the machine); returns those still running after it."""
    import psutil

    procs = _head_processes(group)
    for signal_name in ("terminate", "kill"):  # gcs_server may ignore SIGTERM for a while
        for proc in procs:
            try:
                getattr(proc, signal_name)()
            except psutil.Error:
                pass
        _, procs = psutil.wait_procs(procs, timeout=5)
    return [f"{proc.pid} {proc.name()}" for proc in procs if _running(proc)]


@pytest.fixture(scope="module")
def head():
    """A 2-CPU Ray head with its dashboard, importing this checkout; stopped afterwards."""
    import shutil

    temp = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's unix socket paths must fit in 107 bytes
    singles, workers = _ports()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    command = [RAY, "start", "--head", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
               "--num-cpus=2", "--disable-usage-stats", f"--temp-dir={temp}",
               f"--min-worker-port={workers.start}", f"--max-worker-port={workers.stop - 1}",
               *(f"--{name}={port}" for name, port in singles.items())]
    # A new session: `ray start`'s pid is the process group its daemons keep.
    start = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    try:
        try:
            out, _ = start.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail("`ray start` did not return in 120 s")
        assert start.returncode == 0, f"`ray start` failed:\n{out[-4000:]}"
        yield {"address": f"127.0.0.1:{singles['port']}", "dashboard": f"http://127.0.0.1:{singles['dashboard-port']}",
               "env": env}
    finally:
        left = _stop_head(start.pid)
        shutil.rmtree(temp, ignore_errors=True)
    assert not left, f"processes of the test's Ray head outlived it: {left}"


def _ray(head, *args: str, timeout: int = 60) -> str:
    try:
        done = subprocess.run([RAY, *args], env=head["env"], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"`ray {' '.join(args)}` did not return in {timeout} s"
    return done.stdout + done.stderr


def _wait_for_job(client, job_id: str, deadline_s: float):
    end = time.monotonic() + deadline_s
    while True:
        status = client.get_job_status(job_id)
        if status.is_terminal() or time.monotonic() > end:
            return status
        time.sleep(2)


@pytest.mark.slow
@pytest.mark.timeout(JOB_DEADLINE_S + 240)  # a last resort: the waits below have their own deadlines
def test_a_ray_job_submission_runs_a_study_to_its_exact_budget(head, tmp_path):
    import optuna
    from ray.job_submission import JobStatus, JobSubmissionClient
    from ray.util.state import list_actors

    job_id = f"presso-{os.getpid()}-{int(time.time())}"
    url = f"sqlite:///{tmp_path}/studies.db"
    submit = _ray(head, "job", "submit", "--address", head["dashboard"], "--submission-id", job_id, "--no-wait",
                  "--", PRESSO, "run", str(TINY), "--study", "submitted", "--trials", str(TRIALS),
                  "--backend", "ray", "--ray-address", "auto", "--storage", url, "--no-tracking", "--no-progress")
    client = JobSubmissionClient(head["dashboard"])
    assert job_id in {job.submission_id for job in client.list_jobs()}, f"`ray job submit` failed:\n{submit[-3000:]}"

    status = _wait_for_job(client, job_id, JOB_DEADLINE_S)
    if status != JobStatus.SUCCEEDED:
        info = client.get_job_info(job_id)
        logs = client.get_job_logs(job_id)
        cluster = _ray(head, "status", "--address", head["address"])
        if status.is_terminal():
            what = f"job {job_id} ended {status.value} ({info.message})"
        else:
            client.stop_job(job_id)
            what = f"job {job_id} was still {status.value} after {JOB_DEADLINE_S} s, and was stopped"
        pytest.fail(f"{what}\n--- job logs ---\n{logs[-6000:]}\n"
                    f"--- ray status (pending demands) ---\n{cluster[-3000:]}")

    logs = client.get_job_logs(job_id)
    assert f"{TRIALS}/{TRIALS} trials" in logs, logs[-3000:]
    study = optuna.load_study(study_name="submitted", storage=url)
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE] * TRIALS, (states, logs[-3000:])
    # The trials ran on actors of this head: the driver joined it and started no cluster of its own.
    actors = list_actors(address=head["dashboard"], filters=[("class_name", "=", "TrialWorker")], detail=True)
    head_pids = {actor.pid for actor in actors}
    trial_pids = {int(t.user_attrs["worker"].rsplit(":", 1)[1]) for t in study.trials}
    assert trial_pids and trial_pids <= head_pids, (trial_pids, head_pids)
