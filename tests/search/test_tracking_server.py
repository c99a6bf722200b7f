"""Tracking against a real ``mlflow server``: a server killed mid-study, then ``sync_study``;
and ``start_ui`` in the foreground. Each test starts its own servers (10-15 s each)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import optuna
import pytest

from presso.search.tracking import MlflowTracker, free_port, spawn_ui, sync_study
from presso.search.tracking._testing import add_trial, create_study

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
optuna.logging.set_verbosity(optuna.logging.WARNING)

POINTS = [(1.2, 0.5), (1.1, 0.6), (1.5, 0.3), (2.5, 0.1), (1.0, 0.9), (1.3, 0.55), (1.05, 0.58)]
FRONT = {0, 2, 4, 6}  # 1 is dominated by 6 (logged while the server is down), 3 is infeasible


def _group_rss_mb(pgid: int) -> float:
    out = subprocess.run(["ps", "-o", "rss=", "-g", str(pgid)], capture_output=True, text=True).stdout
    return sum(int(x) for x in out.split()) / 1024


def test_server_killed_mid_study_then_sync_completes_mlflow(tmp_path, caplog, capsys):
    from mlflow import MlflowClient

    backend = f"sqlite:///{tmp_path}/mlflow.db"
    study = create_study(f"sqlite:///{tmp_path}/studies.db", "killed")
    caplog.set_level(logging.WARNING, logger="presso.tracking")
    ui = spawn_ui(backend, log_path=tmp_path / "server1.log")
    port = int(ui.url.rsplit(":", 1)[1])
    try:
        with capsys.disabled():
            print(f"\n[tracking] mlflow server --workers 1: {_group_rss_mb(ui.process.pid):.0f} MB RSS")
        tracker = MlflowTracker(ui.url)  # default refresh policy
        tracker.on_run_start(study, None)
        spent = []
        for i, point in enumerate(POINTS[:3]):
            trial = add_trial(study, *point, seed=i)
            before = tracker.seconds_spent
            tracker.on_trial_end(study, trial)
            assert tracker.flush(60)
            spent.append(tracker.seconds_spent - before)
        with capsys.disabled():
            print(f"[tracking] HTTP store: worker {1000 * sum(spent[1:]) / len(spent[1:]):.0f} ms per trial "
                  "(default refresh policy)")
        parent_id = tracker.parent_run_id
        assert tracker.online and parent_id
    finally:
        ui.kill()  # SIGKILL: what a crashed server looks like

    for i, point in enumerate(POINTS[3:], start=3):  # the study goes on
        trial = add_trial(study, *point, seed=i)
        started = time.perf_counter()
        tracker.on_trial_end(study, trial)
        assert time.perf_counter() - started < 0.05
    failed = add_trial(study, None, None, seed=9, failure="loss is NaN")
    tracker.on_trial_end(study, failed)
    tracker.on_run_end(study, "FINISHED")
    assert not tracker.online
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "presso sync --study killed" in warnings[0], warnings

    with spawn_ui(backend, port=port, log_path=tmp_path / "server2.log") as ui:
        client = MlflowClient(ui.url)
        experiment = client.get_experiment_by_name("killed")
        logged = client.search_runs([experiment.experiment_id], "tags.`presso.kind` = 'trial'")
        assert len(logged) == 3  # only what was logged before the kill

        report = sync_study(study, ui.url)
        assert (report.created, report.unchanged) == (len(POINTS) + 1 - 3, 3)
        again = sync_study(study, ui.url)
        assert (again.created, again.updated, again.unchanged) == (0, 0, len(POINTS) + 1)

        runs = client.search_runs([experiment.experiment_id], "", max_results=1000)
        children = [r for r in runs if r.data.tags.get("presso.kind") == "trial"]
        parents = [r for r in runs if r.data.tags.get("presso.kind") == "study-run"]
        assert len(runs) == len(POINTS) + 2  # every trial once, plus the one parent run
        assert sorted(int(r.data.tags["presso.trial_number"]) for r in children) == list(range(len(POINTS) + 1))
        assert [p.info.run_id for p in parents] == [parent_id]
        assert parents[0].info.status == "FINISHED"  # left RUNNING by the kill, closed by the sync
        assert all(r.data.tags["mlflow.parentRunId"] == parent_id for r in children)
        assert {int(r.data.tags["presso.trial_number"]) for r in children if r.data.tags["presso.pareto"] == "true"} == FRONT
        by_number = {int(r.data.tags["presso.trial_number"]): r for r in children}
        assert by_number[len(POINTS)].info.status == "FAILED"
        assert by_number[len(POINTS)].data.tags["presso.failure"] == "loss is NaN"
        artifacts = {a.path for a in client.list_artifacts(parent_id)}
        assert {"pareto_front.html", "pareto_front.png", "pareto_front.csv"} <= artifacts
        assert client.list_artifacts(by_number[6].info.run_id)[0].path == "plan.yaml"


def test_start_ui_prints_the_url_and_stops_on_ctrl_c(tmp_path):
    from mlflow import MlflowClient

    port = free_port()
    experiment = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").create_experiment("s", tags={"presso.study": "s"})
    code = (
        "from presso.search.tracking import start_ui; "
        f"raise SystemExit(start_ui('sqlite:///{tmp_path}/mlflow.db', port={port}))"
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        link = f"runs of study 's': {url}/#/experiments/{experiment}/runs?workflowType=machine_learning"
        while not any(link in line for line in lines):  # printed right after "MLflow UI: URL"
            assert process.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.2)
        assert any(f"MLflow UI: {url}" in line for line in lines)
        with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
            assert response.status == 200
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    time.sleep(0.5)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{url}/health", timeout=2)
    assert (tmp_path / "mlflow-ui.log").exists()
