"""`presso run --backend ray` against a running Ray head: joined with --ray-address, and
submitted as a Ray Job (`ray job submit`, which needs the dashboard of `ray[default]`)."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "examples" / "tiny.yaml"
RAY = str(Path(sys.executable).with_name("ray"))
PRESSO = str(Path(sys.executable).with_name("presso"))


def _free_port(used: set[int]) -> int:
    """A free port below the ephemeral range (32768+), where Ray's own workers bind theirs."""
    for port in range(20000 + os.getpid() % 5000, 32000):
        if port in used:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        used.add(port)
        return port
    raise RuntimeError("no free port in 20000-32000")


@pytest.fixture(scope="module")
def head():
    """A one-CPU Ray head with its dashboard; stopped (with its processes) afterwards."""
    temp = Path(f"/tmp/rj{os.getpid()}")  # short: Ray's socket paths must fit in 107 bytes
    temp.mkdir(exist_ok=True)
    used: set[int] = set()
    port, dashboard = _free_port(used), _free_port(used)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_TMPDIR": str(temp), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    start = subprocess.run(
        [RAY, "start", "--head", f"--port={port}", f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1",
         "--include-dashboard=true", "--num-cpus=1", "--disable-usage-stats", f"--temp-dir={temp}",
         f"--ray-client-server-port={_free_port(used)}", f"--min-worker-port={_free_port(used)}",
         "--max-worker-port=32700", f"--dashboard-agent-listen-port={_free_port(used)}",
         f"--metrics-export-port={_free_port(used)}", f"--node-manager-port={_free_port(used)}",
         f"--object-manager-port={_free_port(used)}"],
        env=env, capture_output=True, text=True, timeout=180,
    )
    try:
        assert start.returncode == 0, start.stdout[-2000:] + start.stderr[-2000:]
        yield {"address": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dashboard}", "env": env}
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def _actors(head) -> int:
    """How many actors the head has run (alive or dead)."""
    listed = subprocess.run([RAY, "list", "actors", "--address", head["dashboard"], "--format", "json", "--limit", "1000"],
                            env=head["env"], capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr[-2000:]
    return len(json.loads(listed.stdout))


def _stored(url: str, name: str):
    from presso.search import load_existing_study, trial_rows

    return trial_rows(load_existing_study(name, url))


@pytest.mark.slow
def test_presso_run_joins_a_running_head_with_ray_address(head, tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    run = subprocess.run(
        [PRESSO, "run", str(TINY), "--study", "joined", "--trials", "3", "--backend", "ray",
         "--ray-address", head["address"], "--storage", url, "--no-tracking", "--no-progress"],
        env=head["env"], cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = _stored(url, "joined")
    assert len(rows) == 3 and all(r.state == "COMPLETE" for r in rows), [(r.state, r.failure) for r in rows]
    # The trials ran on actors of the head, not on a cluster of the driver's own.
    assert _actors(head) >= 1


@pytest.mark.slow
def test_a_ray_job_submission_runs_a_study_to_its_exact_budget(head, tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    submit = subprocess.run(
        [RAY, "job", "submit", "--address", head["dashboard"], "--submission-id", f"presso-{os.getpid()}",
         "--", PRESSO, "run", str(TINY), "--study", "submitted", "--trials", "3", "--backend", "ray",
         "--ray-address", "auto", "--storage", url, "--no-tracking", "--no-progress"],
        env=head["env"], cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    out = submit.stdout + submit.stderr
    # `ray job submit` waits for the job and exits non-zero unless it SUCCEEDED.
    assert submit.returncode == 0 and "SUCCEEDED" in out, out[-4000:]
    status = subprocess.run([RAY, "job", "status", "--address", head["dashboard"], f"presso-{os.getpid()}"],
                            env=head["env"], capture_output=True, text=True, timeout=120)
    assert "SUCCEEDED" in status.stdout + status.stderr
    rows = _stored(url, "submitted")
    assert len(rows) == 3 and all(r.state == "COMPLETE" for r in rows), [(r.state, r.failure) for r in rows]
