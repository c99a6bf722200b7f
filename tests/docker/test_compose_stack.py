"""The compose stack of docker/, started for real: a study runs from the Presso container on
the Ray head + worker containers, records its trials in the PostgreSQL container and mirrors
them to the MLflow server container.

Needs a Docker engine (started here with ``docker/engine.sh`` when none runs) and the images
of ``make docker-images``; CI builds them before the test suite. Every service uses the host
network on 127.0.0.1 and ports picked free here; the stack and its volumes are removed when the
test ends, passed or not.
"""

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.docker]

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker" / "compose.yaml"
IMAGES = ("presso:cpu", "presso-postgres:15")
STUDY, TRIALS = "tiny-ray", 6  # docker/studies/tiny-ray.yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sh(*args, timeout=120, env=None, check=True) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=check)


def logs(compose, env) -> str:
    """The services' last lines, the head's raylet log (where a node that never registers says
    why, e.g. a port in use) and its Ray Client server logs (where a driver that cannot join
    says why)."""
    out = sh(*compose, "logs", "--no-color", "--tail", "40", timeout=60, env=env, check=False).stdout[-6000:]
    head = sh(*compose, "exec", "-T", "ray-head", "sh", "-c",
              "tail -n 20 /tmp/ray/session_latest/logs/raylet.err /tmp/ray/session_latest/logs/raylet.out;"
              "tail -n 30 /tmp/ray/session_latest/logs/ray_client_server*.err", timeout=60, env=env, check=False)
    return f"{out}\n{head.stdout[-6000:]}"


@pytest.fixture(scope="module")
def stack():
    if shutil.which("docker") is None:
        pytest.fail("docker CLI missing: apt-get install docker.io (see docker/README.md)")
    sh("bash", "docker/engine.sh", timeout=180)
    missing = [image for image in IMAGES if sh("docker", "image", "inspect", image, check=False).returncode]
    assert not missing, f"images {missing} missing: run `make docker-images` first"

    ports = {name: free_port() for name in ("PG_PORT", "MLFLOW_PORT", "RAY_PORT", "RAY_CLIENT_PORT", "RAY_DASHBOARD_PORT")}
    env = {**os.environ, **{k: str(v) for k, v in ports.items()}, "BIND_HOST": "127.0.0.1", "RAY_NODE_IP": "127.0.0.2",
           "POSTGRES_PASSWORD": secrets.token_hex(8), "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    compose = ("docker", "compose", "-p", f"presso-test-{os.getpid()}", "-f", str(COMPOSE))
    try:
        started = time.monotonic()
        up = sh(*compose, "up", "-d", "--wait", "--wait-timeout", "240", timeout=300, env=env, check=False)
        assert up.returncode == 0, f"compose up failed:\n{up.stderr[-3000:]}\n{logs(compose, env)}"
        print(f"\nstack up in {time.monotonic() - started:.0f} s")
        yield compose, env
    finally:
        sh(*compose, "down", "--volumes", "--remove-orphans", "--timeout", "10", timeout=180, env=env, check=False)


def test_study_runs_on_the_compose_cluster(stack):
    compose, env = stack
    # Two Ray nodes: the head (no CPUs, so no trial runs there) and the worker.
    # The worker's container is up before its raylet has joined: wait for it.
    deadline = time.monotonic() + 90
    while True:
        status = sh(*compose, "exec", "-T", "ray-head", "ray", "status",
                    f"--address={env['RAY_NODE_IP']}:{env['RAY_PORT']}", env=env, timeout=60, check=False)
        nodes = len(re.findall(r"^\s*1 node_", status.stdout, re.M))
        if nodes == 2 or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert nodes == 2, f"{status.stdout}{status.stderr}\n{logs(compose, env)}"

    command = (f'presso run /studies/{STUDY}.yaml --no-progress --storage "$PRESSO_STORAGE" '
               '--tracking-uri "$MLFLOW_TRACKING_URI" --backend ray --ray-address "$RAY_ADDRESS"')
    started = time.monotonic()
    for attempt in range(3):
        run = sh(*compose, "exec", "-T", "presso", "sh", "-c", command, env=env, timeout=300, check=False)
        if not (run.returncode and "cannot join the cluster" in run.stderr):
            break
        # NOTE: Ray Client's per-driver server takes a port from a fixed range (23000-23999) on
        # the host's network, shared with any other Ray Client on the machine; its start failed
        # here about once in four runs. Another attempt takes the next port; the study resumes
        # to exactly its budget, which the checks below count.
        print(f"\nattempt {attempt + 1} could not join Ray, retrying:\n{run.stderr[-1500:]}\n{logs(compose, env)}")
    wall = time.monotonic() - started
    assert run.returncode == 0, f"presso run failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}\n{logs(compose, env)}"
    print(f"study {STUDY}: {TRIALS} trials in {wall:.0f} s")

    # The study store: exactly the trial budget, all complete, in the PostgreSQL container.
    import psycopg

    url = f"postgresql://presso:{env['POSTGRES_PASSWORD']}@127.0.0.1:{env['PG_PORT']}/optuna"
    with psycopg.connect(url) as db:
        states = db.execute(
            "SELECT t.state, count(*) FROM trials t JOIN studies s USING (study_id) WHERE s.study_name = %s "
            "GROUP BY t.state", (STUDY,)).fetchall()
    assert dict(states) == {"COMPLETE": TRIALS}, states

    # The MLflow server: one run per trial, numbered 0..TRIALS-1, in the study's experiment.
    api = f"http://127.0.0.1:{env['MLFLOW_PORT']}/api/2.0/mlflow"
    with urllib.request.urlopen(f"{api}/experiments/get-by-name?experiment_name={STUDY}", timeout=30) as r:
        experiment_id = json.load(r)["experiment"]["experiment_id"]
    body = json.dumps({"experiment_ids": [experiment_id], "max_results": 1000}).encode()
    request = urllib.request.Request(f"{api}/runs/search", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as r:
        runs = json.load(r).get("runs", [])
    numbers = sorted(int(tag["value"]) for found in runs for tag in found["data"].get("tags", [])
                     if tag["key"] == "presso.trial_number")
    assert numbers == list(range(TRIALS)), numbers
