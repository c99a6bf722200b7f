"""MLflow tracking against real MLflow and real SQLite stores (no server, no mocks)."""

from __future__ import annotations

import csv
import io
import logging
import subprocess
import sys
import time

import optuna
import pytest

from presso.errors import PressoError
from presso.plan import plan_from_dict
from presso.search._config import StudyConfig
from presso.search.tracking import MlflowTracker, free_port, plan_summary, sync_study, ui_url
from presso.search.tracking._testing import MODULES, SPACE, add_trial, create_study
from presso.search.tracking._ui import ui_command

optuna.logging.set_verbosity(optuna.logging.WARNING)

# (ppl_ratio, size_fraction); the constraint is ppl_ratio <= 2.0.
POINTS = [(1.2, 0.5), (1.1, 0.6), (1.5, 0.3), (2.5, 0.1), (1.0, 0.9), (1.3, 0.55)]
FRONT = {0, 1, 2, 4}  # 3 violates the constraint, 5 is dominated by 0


@pytest.fixture(scope="module")
def tracking_db(tmp_path_factory):
    """One MLflow store for the module (creating its schema takes seconds); every test uses
    its own study name, hence its own experiment."""
    return tmp_path_factory.mktemp("runs") / "mlflow.db"


@pytest.fixture
def stores(tmp_path, tracking_db):
    return f"sqlite:///{tmp_path}/studies.db", f"sqlite:///{tracking_db}"


def _client(uri):
    from mlflow import MlflowClient

    return MlflowClient(uri)


def _runs(uri, study_name, kind=None, extra=""):
    client = _client(uri)
    experiment = client.get_experiment_by_name(study_name)
    query = f"tags.`presso.kind` = '{kind}'" if kind else ""
    if extra:
        query = f"{query} and {extra}" if query else extra
    return client.search_runs([experiment.experiment_id], query, max_results=1000)


def _children(uri, study_name):
    return {int(r.data.tags["presso.trial_number"]): r for r in _runs(uri, study_name, "trial")}


def _track(tracker, study, points, *, start_seed=0, failures=()):
    trials = []
    for i, (ppl, size) in enumerate(points):
        trial = add_trial(study, ppl, size, seed=start_seed + i)
        tracker.on_trial_end(study, trial)
        trials.append(trial)
    for reason in failures:
        trial = add_trial(study, None, None, seed=99, failure=reason)
        tracker.on_trial_end(study, trial)
        trials.append(trial)
    assert tracker.flush(120)
    return trials


def test_plan_summary_means_per_space_group():
    from presso.search.tracking._summary import GroupIndex

    layers = {}
    for name in MODULES:
        attn = "self_attn" in name
        layers[name] = {
            "sparsity": {"amount": 0.4 if attn else 0.0, "structure": "unstructured"},
            "quant": {"bits": 4 if attn else 16, "group_size": 32, "symmetric": False},
            "adapter": {"rank": 0 if attn else 8, "alpha": None},
        }
    plan = {"_type": "Plan", "_version": 1, "_data": {"criterion": "wanda", "recovery": {"steps": 5}, "layers": layers}}
    summary = plan_summary(plan, GroupIndex(SPACE))
    assert summary["criterion"] == "wanda" and summary["recovery_steps"] == 5
    assert summary["attn.sparsity_mean"] == pytest.approx(0.4) and summary["mlp.sparsity_mean"] == 0.0
    assert summary["attn.bits_mean"] == 4 and summary["mlp.bits_mean"] == 16
    assert summary["attn.adapter_rank"] == "0" and summary["mlp.adapter_rank"] == "8"
    # 8 attention and 6 MLP modules: unweighted means over the plan's modules
    assert summary["sparsity_mean"] == pytest.approx(0.4 * 8 / 14)
    assert summary["bits_mean"] == pytest.approx((4 * 8 + 16 * 6) / 14)
    assert summary["structure"] == "unstructured" and summary["adapter_rank"] == "0,8"
    assert plan_summary(None) == {"criterion": "magnitude", "recovery_steps": 0}


def test_groups_follow_the_space_rule_for_embedding_tables():
    """Regression: a catch-all group listed first must not take the embedding table in MLflow's
    per-group summary when the plan (``SearchSpace.bind``) puts it in its own group."""
    from presso.search._records import modules_info
    from presso.search.tracking._summary import GroupIndex
    from presso.spaces import SearchSpace, module_group

    space = {"groups": [
        {"name": "blocks", "modules": ["re:.*"], "tie": "group", "bits": [4]},
        {"name": "embed", "modules": ["model.embed_tokens"], "tie": "group", "bits": [8]},
    ]}
    blocks = [f"model.layers.{i}.mlp.{p}" for i in range(2) for p in ("up_proj", "down_proj")]
    exact = ["model.embed_tokens"]
    bound = SearchSpace.from_dict(space).bind(blocks, exact_names=exact)
    planned = {m: unit.group.name for unit in bound.units for m in unit.modules}
    assert planned["model.embed_tokens"] == "embed"
    index = GroupIndex.from_study_info({"space": space, "modules": modules_info(blocks, exact)})
    assert {m: index.group_of(m) for m in planned} == planned
    assert module_group(SearchSpace.from_dict(space), "model.embed_tokens") == "blocks"  # not an embedding here

    plan = bound.sample(lambda name, domain: domain.values[0])
    from presso.plan import plan_to_dict

    summary = plan_summary(plan_to_dict(plan), index)
    assert summary["embed.bits_mean"] == 8 and summary["blocks.bits_mean"] == 4


def test_payload_of_special_trials():
    from optuna.trial import TrialState, create_trial

    from presso.search._records import row_from_trial
    from presso.search.tracking._summary import trial_payload

    def payload(state, **attrs):
        trial = create_trial(state=state, user_attrs=attrs)
        return trial_payload(row_from_trial(trial), trial, ["ppl_ratio", "size_fraction"], None, False)

    low = payload(TrialState.PRUNED, low_values={"ppl_ratio": 3.0, "size_fraction": 0.4},
                  promotion={"promoted": False}, seeded="uniform")
    assert low.status == "FINISHED" and low.metrics == {"low.ppl_ratio": 3.0, "low.size_fraction": 0.4}
    assert low.tags["presso.fidelity"] == "low" and low.tags["presso.promoted"] == "false"
    assert low.tags["presso.seeded"] == "uniform" and low.tags["presso.state"] == "PRUNED"
    assert payload(TrialState.PRUNED, cancelled=True).status == "KILLED"
    interrupted = payload(TrialState.FAIL, interrupted=True)
    assert interrupted.status == "KILLED" and interrupted.tags["presso.interrupted"] == "true"
    failed = payload(TrialState.FAIL, failure="out of memory\nin layer 3")
    assert failed.status == "FAILED" and failed.tags["presso.failure"] == "out of memory in layer 3"


def test_tracker_mirrors_a_study(stores, tmp_path, tracking_db):
    study_uri, tracking_uri = stores
    study = create_study(study_uri, "mirror")
    config = StudyConfig(name="mirror", storage="postgresql://alice:s3cret@db.example/presso", tracking_uri=tracking_uri)
    tracker = MlflowTracker(tracking_uri, refresh_min_s=0)
    tracker.on_run_start(study, config)
    tracker.on_files(study, None, {"uncompressed/report.txt": "dense"})
    tracker.on_files(study, 0, {"report.txt": "front trial 0"})  # before its trial, as workers may hand it over
    tracker.on_files(study, 5, {"report.txt": "dominated trial 5"})
    trials = _track(tracker, study, POINTS, failures=["CUDA out of memory"])
    tracker.on_run_end(study, "FINISHED")

    client = _client(tracking_uri)
    experiment = client.get_experiment_by_name("mirror")
    assert experiment.artifact_location == (tracking_db.parent / "mlartifacts" / "mirror").as_uri()
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    (parent,) = _runs(tracking_uri, "mirror", "study-run")
    assert parent.info.status == "FINISHED" and parent.data.tags["presso.invocation"] == "1"
    assert "presso.previous_run_id" not in parent.data.tags
    assert parent.data.params["sampler"] == "evo" and parent.data.params["objectives"] == "ppl_ratio, size_fraction"
    assert parent.data.params["storage"] == "postgresql://alice:***@db.example/presso"
    assert parent.data.metrics["front_size"] == len(FRONT)

    children = _children(tracking_uri, "mirror")
    assert sorted(children) == [t.number for t in trials]
    for number, run in children.items():
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["presso.pareto"] == ("true" if number in FRONT else "false")
        assert run.info.run_name == f"trial {number}"
    ok = children[0]
    assert ok.info.status == "FINISHED" and ok.data.tags["presso.state"] == "COMPLETE"
    assert ok.data.metrics["ppl_ratio"] == 1.2 and ok.data.metrics["size_fraction"] == 0.5
    assert ok.data.metrics["timing.total_s"] == 2.0 and ok.data.metrics["size_bytes"] == 500_000
    assert ok.data.metrics["constraint.0"] == pytest.approx(1.2 - 2.0)
    expected = plan_summary(trials[0].user_attrs["plan"])
    assert ok.data.params["bits_mean"] == f"{expected['bits_mean']:.4g}"
    assert {"criterion", "structure", "adapter_rank", "attn.sparsity_mean", "mlp.bits_mean"} <= set(ok.data.params)
    assert set(trials[0].params) <= set(ok.data.params)  # the sampler's raw choices
    assert children[3].data.tags["presso.feasible"] == "false"
    failed = children[len(POINTS)]
    assert failed.info.status == "FAILED" and failed.data.tags["presso.failure"] == "CUDA out of memory"
    assert failed.data.tags["presso.state"] == "FAIL"

    # the full plan is an artifact that reads back as the stored plan
    path = client.download_artifacts(ok.info.run_id, "plan.yaml", str(tmp_path))
    import yaml

    with open(path) as handle:
        assert plan_from_dict(yaml.safe_load(handle)) == plan_from_dict(trials[0].user_attrs["plan"])

    # files handed over by on_files: on front trials' runs only, the invocation's on the parent
    def text(run_id, name):
        with open(client.download_artifacts(run_id, name, str(tmp_path / run_id))) as handle:
            return handle.read()

    assert text(ok.info.run_id, "report.txt") == "front trial 0"
    assert "report.txt" not in {a.path for a in client.list_artifacts(children[5].info.run_id)}
    assert text(parent.info.run_id, "uncompressed/report.txt") == "dense"

    names = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"pareto_front.html", "pareto_front.png", "pareto_front.csv", "study.yaml", "best_plans"} <= names
    best = {a.path for a in client.list_artifacts(parent.info.run_id, "best_plans")}
    assert best == {"best_plans/best_ppl_ratio.yaml", "best_plans/best_size_fraction.yaml"}
    front_csv = client.download_artifacts(parent.info.run_id, "pareto_front.csv", str(tmp_path))
    with open(front_csv) as handle:
        rows = list(csv.DictReader(handle))
    assert {int(r["trial"]) for r in rows} == FRONT
    assert {r["mlflow_run_id"] for r in rows} == {children[n].info.run_id for n in FRONT}
    study_yaml = client.download_artifacts(parent.info.run_id, "study.yaml", str(tmp_path))
    with open(study_yaml) as handle:
        text = handle.read()
    assert "s3cret" not in text and "alice:***@" in text
    html = client.download_artifacts(parent.info.run_id, "pareto_front.html", str(tmp_path))
    with open(html) as handle:
        page = handle.read()
    assert "Pareto front" in page and "violates constraints" in page and "plotly" in page


def test_pareto_tags_follow_the_front(stores):
    study_uri, tracking_uri = stores
    study = create_study(study_uri, "moving")
    tracker = MlflowTracker(tracking_uri, refresh_min_s=0)
    tracker.on_run_start(study, None)
    _track(tracker, study, [(1.5, 0.5), (1.2, 0.8)])

    def front():
        return {int(r.data.tags["presso.trial_number"]) for r in _runs(tracking_uri, "moving", "trial", "tags.`presso.pareto` = 'true'")}

    assert front() == {0, 1}
    _track(tracker, study, [(1.4, 0.4)], start_seed=2)  # dominates trial 0
    assert front() == {1, 2}
    _track(tracker, study, [(1.0, 0.3)], start_seed=3)  # dominates everything
    assert front() == {3}
    tracker.on_run_end(study, "FINISHED")
    (parent,) = _runs(tracking_uri, "moving", "study-run")
    assert parent.data.metrics["front_size"] == 1 and parent.data.metrics["best.ppl_ratio"] == 1.0
    history = _client(tracking_uri).get_metric_history(parent.info.run_id, "front_size")
    assert [m.value for m in sorted(history, key=lambda m: m.step)][-1] == 1


def test_resumed_study_continues_in_the_same_experiment(stores):
    study_uri, tracking_uri = stores
    study = create_study(study_uri, "resumed")
    first = MlflowTracker(tracking_uri, refresh_min_s=0)
    first.on_run_start(study, None)
    old = _track(first, study, POINTS[:3])
    first.on_run_end(study, "KILLED")

    second = MlflowTracker(tracking_uri, refresh_min_s=0)
    second.on_run_start(study, None)
    second.on_trial_end(study, old[0])  # re-sent: must not duplicate
    _track(second, study, POINTS[3:], start_seed=3)
    second.on_run_end(study, "FINISHED")

    parents = sorted(_runs(tracking_uri, "resumed", "study-run"), key=lambda r: int(r.data.tags["presso.invocation"]))
    assert [p.data.tags["presso.invocation"] for p in parents] == ["1", "2"]
    assert [p.info.status for p in parents] == ["KILLED", "FINISHED"]
    assert parents[1].data.tags["presso.previous_run_id"] == parents[0].info.run_id
    children = _children(tracking_uri, "resumed")
    assert len(_runs(tracking_uri, "resumed", "trial")) == len(POINTS) == len(children)
    for number, run in children.items():
        assert run.data.tags["mlflow.parentRunId"] == parents[0 if number < 3 else 1].info.run_id
    assert {n for n, r in children.items() if r.data.tags["presso.pareto"] == "true"} == FRONT


def test_sync_backfills_and_is_idempotent(stores):
    study_uri, tracking_uri = stores
    study = create_study(study_uri, "offline")
    for i, (ppl, size) in enumerate(POINTS):
        add_trial(study, ppl, size, seed=i)
    add_trial(study, None, None, seed=7, failure="bad plan")

    report = sync_study(study, tracking_uri)
    assert (report.created, report.updated, report.unchanged) == (len(POINTS) + 1, 0, 0)
    runs = _runs(tracking_uri, "offline")
    (backfill,) = [r for r in runs if r.data.tags["presso.kind"] == "study-run"]
    assert backfill.data.tags["presso.backfill"] == "true" and backfill.info.status == "FINISHED"
    assert all(r.data.tags["mlflow.parentRunId"] == backfill.info.run_id for r in runs if r is not backfill)

    again = sync_study(study, tracking_uri)
    assert (again.created, again.updated, again.unchanged, again.retagged) == (0, 0, len(POINTS) + 1, 0)
    assert len(_runs(tracking_uri, "offline")) == len(runs)
    assert {int(r.data.tags["presso.trial_number"]) for r in _runs(tracking_uri, "offline", "trial", "tags.`presso.pareto` = 'true'")} == FRONT

    # a later tracked invocation neither duplicates the backfilled runs nor loses the link
    tracker = MlflowTracker(tracking_uri, refresh_min_s=0)
    tracker.on_run_start(study, None)
    _track(tracker, study, [(0.9, 0.2)], start_seed=20)
    tracker.on_run_end(study, "FINISHED")
    parents = sorted(_runs(tracking_uri, "offline", "study-run"), key=lambda r: int(r.data.tags["presso.invocation"]))
    assert parents[1].data.tags["presso.previous_run_id"] == backfill.info.run_id
    assert len(_runs(tracking_uri, "offline", "trial")) == len(POINTS) + 2


def test_sync_completes_a_half_logged_run(stores):
    study_uri, tracking_uri = stores
    study = create_study(study_uri, "half")
    trial = add_trial(study, 1.2, 0.5)
    client = _client(tracking_uri)
    first = sync_study(study, tracking_uri)
    (run,) = _runs(tracking_uri, "half", "trial")
    # as if the driver died between creating the run and finishing it
    client.update_run(run.info.run_id, status="RUNNING")
    client.delete_tag(run.info.run_id, "presso.state")
    report = sync_study(study, tracking_uri)
    assert (first.created, report.created, report.updated) == (1, 0, 1)
    (again,) = _runs(tracking_uri, "half", "trial")
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    assert again.data.tags["presso.state"] == "COMPLETE"
    history = client.get_metric_history(run.info.run_id, "ppl_ratio")
    assert [m.value for m in history] == [trial.values[0]]  # no duplicate metric points


def test_sync_needs_presso_metadata(stores):
    study_uri, tracking_uri = stores
    plain = optuna.create_study(study_name="plain", storage=study_uri)
    with pytest.raises(PressoError, match="no Presso metadata"):
        sync_study(plain, tracking_uri)


def test_unreachable_server_warns_once_and_never_stalls(stores, caplog):
    study_uri, _ = stores
    port = free_port()  # nothing listens there
    uri = f"http://bob:hunter2@127.0.0.1:{port}"
    study = create_study(study_uri, "dark")
    tracker = MlflowTracker(uri, retry_s=0)
    caplog.set_level(logging.WARNING, logger="presso.tracking")
    started = time.perf_counter()
    tracker.on_run_start(study, None)
    for i, (ppl, size) in enumerate(POINTS):
        trial = add_trial(study, ppl, size, seed=i)
        hook = time.perf_counter()
        tracker.on_trial_end(study, trial)
        assert time.perf_counter() - hook < 0.05
    tracker.on_run_end(study, "FINISHED")
    assert time.perf_counter() - started < 30
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    message = warnings[0].getMessage()
    assert "presso sync --study dark" in message and "hunter2" not in message and "bob:***@" in message
    assert not tracker.online
    with pytest.raises(PressoError, match="cannot reach") as info:
        sync_study(study, uri)
    assert "hunter2" not in str(info.value)


def test_tracking_overhead_is_small(stores, capsys):
    study_uri, tracking_uri = stores
    study = create_study(study_uri, "overhead")
    tracker = MlflowTracker(tracking_uri)  # default refresh policy: what a user gets
    tracker.on_run_start(study, None)
    assert tracker.flush(120)  # MLflow import and schema creation: once per process / store
    baseline, hooks = tracker.seconds_spent, []
    n = 20
    for i in range(n):
        trial = add_trial(study, 1.0 + (i % 7) / 10, 1.0 - (i % 5) / 10, seed=i)
        started = time.perf_counter()
        tracker.on_trial_end(study, trial)
        hooks.append(time.perf_counter() - started)
        assert tracker.flush(60)  # one trial at a time, as with trials of seconds
    per_trial = (tracker.seconds_spent - baseline) / n
    tracker.on_run_end(study, "FINISHED")
    with capsys.disabled():
        print(f"\n[tracking] SQLite store: worker {per_trial * 1000:.0f} ms per trial (default refresh policy), "
              f"hook {max(hooks) * 1000:.2f} ms max")
    assert max(hooks) < 0.05
    assert per_trial < 1.0  # trials take seconds, and the driver does not wait for this anyway


def test_ui_command_is_lean_and_keeps_passwords_off_the_command_line():
    command, env = ui_command("postgresql://u:pw@localhost/mlflow", 5123, "127.0.0.1")
    assert command[1:4] == ["-m", "mlflow", "server"]
    assert command[command.index("--workers") + 1] == "1"
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert env["MLFLOW_BACKEND_STORE_URI"] == "postgresql://u:pw@localhost/mlflow"
    assert not any("pw" in part for part in command)
    with pytest.raises(PressoError, match="already an MLflow server"):
        ui_command("http://127.0.0.1:5000", 5000, "127.0.0.1")
    assert ui_url() == "http://127.0.0.1:5000"
    assert ui_url("0.0.0.0", 8080) == "http://127.0.0.1:8080"
    assert ui_url("::1", 80) == "http://[::1]:80"


def test_import_is_light():
    code = "import sys, presso.search.tracking; print(sorted(m for m in ('mlflow', 'plotly', 'matplotlib', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_front_artifacts_handle_three_objectives(tmp_path):
    from presso.search._records import TrialRow
    from presso.search.tracking._plots import write_study_artifacts

    objectives = [{"name": n, "direction": d} for n, d in (("a", "minimize"), ("b", "minimize"), ("c", "maximize"))]
    rows = [TrialRow(number=i, state="COMPLETE", values={"a": i, "b": 5 - i, "c": i % 2}, plan={"_data": {"layers": {}}})
            for i in range(5)]
    rows.append(TrialRow(number=5, state="FAIL", failure="x"))
    folder = write_study_artifacts(tmp_path / "out", "three", objectives, rows, {0, 1, 3})
    assert (folder / "pareto_front.png").stat().st_size > 1000
    assert (folder / "pareto_front.html").read_text().count('"Pareto front"') >= 1
    reader = csv.reader(io.StringIO((folder / "pareto_front.csv").read_text()))
    assert next(reader)[:4] == ["trial", "a", "b", "c"]
    assert sorted(p.name for p in (folder / "best_plans").iterdir()) == ["best_a.yaml", "best_b.yaml", "best_c.yaml"]


def test_pareto_png_puts_size_on_x_goes_log_for_an_outlier_and_labels_do_not_overlap(tmp_path):
    from presso.search._records import TrialRow
    from presso.search.tracking._plots import REFERENCE_LABEL, axis_scale, pareto_figure, references, write_png

    objectives = [{"name": "ppl_ratio", "direction": "minimize", "unit": "ratio"},
                  {"name": "size_fraction", "direction": "minimize", "unit": "fraction"}]
    # a crowded front (labels would collide at one offset) and one ppl ratio of 19
    points = [(1.0 + 0.01 * i, 0.30 - 0.004 * i) for i in range(12)] + [(19.0, 0.1), (1.5, 0.6)]
    rows = [TrialRow(number=i, state="COMPLETE", values={"ppl_ratio": p, "size_fraction": s})
            for i, (p, s) in enumerate(points)]
    rows[13].user_attrs = rows[2].user_attrs = {"seeded": "uniform"}  # warm-start uniform plans: references
    front = set(range(13))
    fig = pareto_figure("t", objectives, rows, front)
    ax = fig.axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert REFERENCE_LABEL in legend and "Pareto front" in legend
    (refs,) = [c for c in ax.collections if c.get_label() == REFERENCE_LABEL]
    assert sorted(map(tuple, refs.get_offsets().tolist())) == [(points[2][1], points[2][0]), (0.6, 1.5)]
    everyone_uniform = [TrialRow(number=r.number, state="COMPLETE", values=r.values, user_attrs={"seeded": "uniform"})
                        for r in rows]
    assert references(everyone_uniform) == []  # the uniform sampler: nothing to set apart
    assert ax.get_xlabel().startswith("size_fraction") and ax.get_ylabel().startswith("ppl_ratio")
    assert ax.get_yscale() == "log" and ax.get_xscale() == "linear"
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert sorted(t.get_text() for t in ax.texts) == sorted(str(i) for i in front)
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    write_png(tmp_path / "p.png", "t", objectives, rows, front)
    from matplotlib.image import imread

    image = imread(tmp_path / "p.png")
    assert image.shape[0] > 300 and image.shape[1] > 500 and image.std() > 0.01  # not blank
    assert axis_scale([1.0, 1.2]) == "linear" and axis_scale([0.0, 5.0]) == "linear" and axis_scale([1, 10]) == "log" and axis_scale([1, 9]) == "linear"


def test_allocation_heatmap_has_blocks_on_x_and_module_types_on_y(tmp_path):
    from presso.search._records import TrialRow
    from presso.search.tracking._allocation import OUTSIDE, allocation_figure, allocation_table, write_allocation_pngs

    layers = {"model.embed_tokens": {"quant": {"bits": 8}}}
    for block in range(3):
        layers[f"model.layers.{block}.self_attn.q_proj"] = {"quant": {"bits": 4 if block else 16}}
        layers[f"model.layers.{block}.mlp.down_proj"] = {"sparsity": {"amount": 0.1 * block}, "quant": {"bits": 8}}
    plan = {"_type": "Plan", "_data": {"layers": layers}}
    columns, kinds, cells = allocation_table(plan)
    assert columns == [OUTSIDE, "0", "1", "2"]
    assert kinds == ["model.embed_tokens", "self_attn.q_proj", "mlp.down_proj"]
    assert cells[("self_attn.q_proj", "0")] == (16.0, 0.0) and cells[("mlp.down_proj", "2")] == (8.0, 0.2)
    fig = allocation_figure(plan, "t")
    bits_ax, sparsity_ax = fig.axes[:2]
    for ax in (bits_ax, sparsity_ax):
        assert ax.get_xlabel() == "block" and ax.get_ylabel() == "module type"
        assert [t.get_text() for t in ax.get_xticklabels()] == columns
        assert [t.get_text() for t in ax.get_yticklabels()] == kinds
    assert bits_ax.get_title().startswith("bits") and sparsity_ax.get_title().startswith("sparsity")
    assert bits_ax.images[0].get_array()[1, 1] == 16.0 and sparsity_ax.images[0].get_array()[2, 3] == pytest.approx(0.2)
    rows = [TrialRow(number=n, state="COMPLETE", values={"a": n}, plan=plan) for n in range(3)]
    written = write_allocation_pngs(tmp_path, rows, {0, 2})
    assert [p.name for p in written] == ["trial_0.png", "trial_2.png"]
    assert all(p.stat().st_size > 5000 for p in written)


def test_pareto_plot_flag_writes_the_pictures(tmp_path, capsys, monkeypatch):
    from presso.cli import main

    monkeypatch.chdir(tmp_path)
    study = tmp_path / "study.yaml"
    study.write_text("name: pic\nmodel: tiny:llama\nspace: builtin:tiny\nobjectives: [ppl_ratio, size_fraction]\n"
                     "trials: 3\ndevice: cpu\ntracking_uri: null\neval: {sequences: 4, seq_len: 32}\n")
    assert main(["run", str(study), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["pareto", "--study", "pic", "--plot", "pics", "--format", "json"]) == 0
    out = capsys.readouterr()
    assert out.out.lstrip().startswith("[") and "allocation heatmaps" in out.err
    assert (tmp_path / "pics" / "pareto_front.png").stat().st_size > 5000
    assert sorted(p.name for p in (tmp_path / "pics" / "allocation").iterdir())
