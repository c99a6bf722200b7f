"""The MLflow mirror of one study: one experiment (named after the study), one parent run per
``presso run`` invocation, one child run per finished trial, kept idempotent by looking runs up
by the ``presso.trial_number`` tag. Used by the live tracker and by :func:`sync_study`.

The study store is the source of truth; everything here is rebuilt from it.
"""

from __future__ import annotations

import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from presso.errors import PressoError
from presso.search._records import SIZE_KEY, STUDY_ATTR, pareto_rows, plan_source, row_from_trial, rows_of, study_info
from presso.search._storage import redact
from presso.search.tracking import _client
from presso.search.tracking._plots import best_rows, write_study_artifacts
from presso.search.tracking._summary import (
    FINISHED_STATES,
    INVOCATION_TAG,
    KIND_RUN,
    KIND_TAG,
    KIND_TRIAL,
    MAX_PARAM_CHARS,
    NUMBER_TAG,
    PARENT_TAG,
    PARETO_TAG,
    PREVIOUS_TAG,
    RUN_NAME_TAG,
    SOURCE_TAGS,
    STATE_TAG,
    GroupIndex,
    mlflow_key,
    to_ms,
    trial_payload,
)

_TERMINAL = ("FINISHED", "FAILED", "KILLED")
# A trial that started up to this long before an invocation's parent run still belongs to it
# (clocks of Ray workers drift a little).
_CLOCK_SLACK_MS = 60_000


@dataclass
class ParentRun:
    run_id: str
    invocation: int
    start_ms: int
    status: str


@dataclass
class ChildRun:
    run_id: str
    parent_id: str | None
    state: str | None
    pareto: str | None
    status: str
    params: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)


def front_numbers(study, rows) -> set[int]:
    """Trial numbers on the feasible Pareto front (``_records.pareto_rows``)."""
    if not study_info(study).get("objectives"):
        return set()
    return {r.number for r in pareto_rows(study, rows)}


def _objectives(study) -> list[dict]:
    info = study_info(study)
    objectives = [dict(o) for o in info.get("objectives") or []]
    if not objectives:
        raise PressoError(
            f"tracking: study {study.study_name!r} has no Presso metadata (study attribute {STUDY_ATTR!r}); "
            "only studies created by `presso run` can be mirrored to MLflow"
        )
    return objectives


def _flatten(prefix: str, value, out: dict) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), inner, out)
    elif isinstance(value, (list, tuple)):
        out[prefix] = ", ".join(str(v) for v in value)
    else:
        out[prefix] = value


def _redacted_config(config) -> dict | None:
    if config is None:
        return None
    data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    for key in ("storage", "tracking_uri", "ray_address"):
        if data.get(key):
            data[key] = redact(data[key])
    return data


def parent_params(info: dict, config) -> dict[str, str]:
    """Filterable settings of one invocation (the full config goes to ``study.yaml``)."""
    flat: dict = {}
    data = _redacted_config(config)
    if data is not None:
        if isinstance(data.get("space"), dict):
            data["space"] = data["space"].get("name", "inline")
        _flatten("", data, flat)
    else:
        for key in ("model", "sampler", "trials", "seed"):
            if key in info:
                flat[key] = info[key]
        flat["objectives"] = ", ".join(o["name"] for o in info.get("objectives", []))
        flat["constraints"] = ", ".join(info.get("constraints", []))
    flat["space_fingerprint"] = info.get("space_fingerprint", "")
    for key, text in (info.get(SIZE_KEY) or {}).items():  # what size_bytes and dense_bytes count
        flat[f"size.{key}"] = text
    out = {}
    for key, value in flat.items():
        text = "" if value is None else str(value)
        out[mlflow_key(key)] = text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 3] + "..."
    return out


@dataclass
class SyncReport:
    """What :func:`sync_study` did."""

    experiment_id: str
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    retagged: int = 0
    skipped_running: int = 0
    parent_run_id: str | None = None

    @property
    def runs(self) -> int:
        return self.created + self.updated + self.unchanged

    def __str__(self) -> str:
        return (
            f"{self.runs} trial runs in experiment {self.experiment_id}: {self.created} created, "
            f"{self.updated} updated, {self.unchanged} already up to date, {self.retagged} re-tagged"
            + (f", {self.skipped_running} still running (not synced)" if self.skipped_running else "")
        )


class StudyMirror:
    """MLflow state of one study, loaded once and kept in step with what this process logs."""

    def __init__(self, client, study, tracking_uri: str, artifact_root: str | None = None):
        self.client = client
        self.study = study
        self.uri = tracking_uri
        self.artifact_location = _client.artifact_root_for(tracking_uri, artifact_root)
        self.info = study_info(study)
        self.objectives = _objectives(study)
        self.names = [o["name"] for o in self.objectives]
        self.groups = GroupIndex.from_study_info(self.info)
        self.experiment_id: str | None = None
        self.parents: list[ParentRun] = []
        self.children: dict[int, ChildRun] = {}

    # -- loading -----------------------------------------------------------------------
    def load(self) -> None:
        location = self.artifact_location
        if location is not None and "://" in location and location.startswith("file:"):
            location = f"{location.rstrip('/')}/{re.sub(r'[^A-Za-z0-9_.-]', '_', self.study.study_name)}"
        self.experiment_id = _client.get_or_create_experiment(self.client, self.study.study_name, location)
        self.parents, self.children = [], {}
        for run in _client.search_all(self.client, self.experiment_id, f"tags.`{KIND_TAG}` = '{KIND_RUN}'"):
            self._remember_parent(run)
        for run in _client.search_all(self.client, self.experiment_id, f"tags.`{KIND_TAG}` = '{KIND_TRIAL}'"):
            self._remember_child(run)

    def _remember_parent(self, run) -> None:
        tags = run.data.tags
        try:
            invocation = int(tags.get(INVOCATION_TAG, "0"))
        except ValueError:
            invocation = 0
        self.parents.append(ParentRun(run.info.run_id, invocation, run.info.start_time or 0, run.info.status))
        self.parents.sort(key=lambda p: (p.start_ms, p.invocation))

    def _remember_child(self, run) -> ChildRun | None:
        try:
            number = int(run.data.tags[NUMBER_TAG])
        except (KeyError, ValueError):
            return None
        known = self.children.get(number)
        if known is not None and known.run_id != run.info.run_id:
            return known  # a duplicate from an older bug or a race: keep the first one found
        child = ChildRun(
            run_id=run.info.run_id,
            parent_id=run.data.tags.get(PARENT_TAG),
            state=run.data.tags.get(STATE_TAG),
            pareto=run.data.tags.get(PARETO_TAG),
            status=run.info.status,
            params=dict(run.data.params),
            metrics=dict(run.data.metrics),
        )
        self.children[number] = child
        return child

    def lookup(self, number: int, remote: bool = True) -> ChildRun | None:
        """The child run of trial ``number``: from memory, else (``remote``) from MLflow, where
        another process or a sync may have created it since :meth:`load`."""
        if number in self.children or not remote:
            return self.children.get(number)
        runs = self.client.search_runs(
            [self.experiment_id], f"tags.`{NUMBER_TAG}` = '{number}' and tags.`{KIND_TAG}` = '{KIND_TRIAL}'",
            max_results=5, order_by=["attributes.start_time ASC"],
        )
        return self._remember_child(runs[0]) if runs else None

    # -- parent runs ---------------------------------------------------------------------
    @property
    def latest_parent(self) -> ParentRun | None:
        return max(self.parents, key=lambda p: (p.invocation, p.start_ms)) if self.parents else None

    def new_parent(self, start_ms: int, config=None, *, backfill: bool = False, status: str | None = None,
                   end_ms: int | None = None) -> str:
        previous = self.latest_parent
        invocation = (previous.invocation if previous else 0) + 1
        tags = {
            KIND_TAG: KIND_RUN,
            INVOCATION_TAG: str(invocation),
            "presso.study": self.study.study_name,
            RUN_NAME_TAG: f"{'backfill' if backfill else 'run'} {invocation}",
            **SOURCE_TAGS,
        }
        if previous:
            tags[PREVIOUS_TAG] = previous.run_id
        if backfill:
            tags["presso.backfill"] = "true"
        storage = getattr(config, "storage", None)
        if storage:
            tags["presso.storage"] = redact(storage)
        run = self.client.create_run(self.experiment_id, start_time=start_ms, tags=tags)
        run_id = run.info.run_id
        _client.log_batch(self.client, run_id, params=parent_params(self.info, config), timestamp_ms=start_ms)
        study_doc = {"study": self.study.study_name, "invocation": invocation, "presso": self.info}
        if config is not None:
            study_doc["config"] = _redacted_config(config)
        self.client.log_text(run_id, yaml.safe_dump(study_doc, sort_keys=False), "study.yaml")
        if status is not None:
            self.client.set_terminated(run_id, status, end_time=end_ms)
        self.parents.append(ParentRun(run_id, invocation, start_ms, status or "RUNNING"))
        self.parents.sort(key=lambda p: (p.start_ms, p.invocation))
        return run_id

    def finish_parent(self, run_id: str, status: str, end_ms: int) -> None:
        self.client.set_terminated(run_id, status, end_time=end_ms)
        for parent in self.parents:
            if parent.run_id == run_id:
                parent.status = status

    def parent_for(self, start_ms: int | None) -> ParentRun | None:
        """The invocation a trial belongs to: the last parent run that started before it."""
        if not self.parents:
            return None
        if start_ms is None:
            return self.latest_parent
        before = [p for p in self.parents if p.start_ms <= start_ms]
        if before:
            return before[-1]
        first = self.parents[0]
        return first if start_ms >= first.start_ms - _CLOCK_SLACK_MS else None

    # -- child runs ----------------------------------------------------------------------
    def log_trial(self, trial, parent_id: str | None, on_front: bool, row=None, remote: bool = True) -> str:
        """Create or complete the child run of one finished trial.

        Returns ``"created"``, ``"updated"`` or ``"unchanged"``; logs only what is missing, so
        calling it again never duplicates a run, a param or a metric point.
        """
        row = row or row_from_trial(trial, plan_source(self.info))
        child = self.lookup(trial.number, remote)
        if child is not None and child.status in _TERMINAL and child.state == row.state:
            return "unchanged"
        payload = trial_payload(row, trial, self.names, self.groups, on_front)
        if child is None:
            tags = dict(payload.tags)
            if parent_id:
                tags[PARENT_TAG] = parent_id
            run = self.client.create_run(self.experiment_id, start_time=payload.start_ms, tags=tags)
            child = ChildRun(run.info.run_id, parent_id, None, payload.tags[PARETO_TAG], "RUNNING")
            self.children[trial.number] = child
            result, tags = "created", {}
        else:
            result, tags = "updated", payload.tags
        params = {k: v for k, v in payload.params.items() if k not in child.params}
        metrics = {k: v for k, v in payload.metrics.items() if child.metrics.get(k) != v}
        now = payload.end_ms or int(time.time() * 1000)
        _client.log_batch(self.client, child.run_id, params=params, metrics=metrics, tags=tags, timestamp_ms=now)
        child.params.update(params)
        child.metrics.update(metrics)
        if payload.plan is not None:
            self.client.log_text(child.run_id, yaml.safe_dump(payload.plan, sort_keys=False), "plan.yaml")
        # Status last: a terminal status with the current state tag marks the run complete.
        self.client.set_terminated(child.run_id, payload.status, end_time=payload.end_ms)
        child.status, child.state, child.pareto = payload.status, row.state, payload.tags[PARETO_TAG]
        return result

    def log_files(self, run_id: str, files: dict[str, str]) -> None:
        """Text files (``{relative path: text}``) as artifacts of one run."""
        for name, text in files.items():
            self.client.log_text(run_id, text, name)

    def retag(self, front: set[int]) -> int:
        """Keep ``presso.pareto`` true exactly on the current front; returns runs re-tagged."""
        changed = 0
        for number, child in self.children.items():
            want = "true" if number in front else "false"
            if child.pareto != want:
                self.client.set_tag(child.run_id, PARETO_TAG, want)
                child.pareto = want
                changed += 1
        return changed

    # -- study-level artifacts -------------------------------------------------------------
    def refresh(self, parent_id: str, rows, front: set[int], artifacts: bool = True) -> None:
        """Progress metrics on the parent run (step = finished trials) and, if asked, the
        Pareto plots, the front CSV and the best plans."""
        finished = [r for r in rows if r.state in FINISHED_STATES]
        metrics = {
            "trials_complete": sum(r.state == "COMPLETE" for r in rows),
            "trials_failed": sum(r.state == "FAIL" and r.failure is not None for r in rows),
            "front_size": len(front),
        }
        for name, row in best_rows(self.objectives, rows).items():
            metrics[mlflow_key(f"best.{name}")] = row.values[name]
        _client.log_batch(self.client, parent_id, metrics=metrics, timestamp_ms=int(time.time() * 1000), step=len(finished))
        if artifacts:
            run_ids = {n: c.run_id for n, c in self.children.items()}
            with tempfile.TemporaryDirectory(prefix="presso-mlflow-") as tmp:
                folder = write_study_artifacts(Path(tmp) / "study", self.study.study_name, self.objectives, rows, front, run_ids)
                self.client.log_artifacts(parent_id, str(folder))

    def sync(self, trials, rows_by_number: dict, front: set[int], report: SyncReport, *,
             default_parent: str | None = None, only=None) -> None:
        """Log every finished trial (``only``: a predicate on the trial) under the invocation
        it belongs to, creating a ``backfill`` parent for trials older than every parent."""
        todo = [t for t in trials if t.state.name in FINISHED_STATES and (only is None or only(t))]
        report.skipped_running += sum(1 for t in trials if t.state.name not in FINISHED_STATES and (only is None or only(t)))
        missing = [t for t in todo if self.lookup(t.number, remote=False) is None]
        orphans = [t for t in missing if default_parent is None and self.parent_for(to_ms(t.datetime_start)) is None]
        if orphans:
            starts = [to_ms(t.datetime_start) or 0 for t in orphans]
            ends = [to_ms(t.datetime_complete) or 0 for t in orphans]
            self.new_parent(min(starts), None, backfill=True, status="FINISHED", end_ms=max(ends + starts))
        for trial in sorted(todo, key=lambda t: t.number):
            parent = default_parent
            if parent is None and self.lookup(trial.number, remote=False) is None:
                found = self.parent_for(to_ms(trial.datetime_start))
                parent = found.run_id if found else None
            result = self.log_trial(trial, parent, trial.number in front, rows_by_number.get(trial.number), remote=False)
            setattr(report, result, getattr(report, result) + 1)


def sync_study(study, tracking_uri: str | None = None, *, artifact_root: str | None = None) -> SyncReport:
    """Bring MLflow up to date with a study store: create the runs of trials that were never
    logged (a tracking server was down, ``--no-track``), complete half-logged ones, re-tag the
    Pareto front, close parent runs left open, and refresh the study artifacts.

    Idempotent: runs are found by their ``presso.trial_number`` tag, so syncing again creates
    nothing new.

    Args:
        study: the :class:`optuna.study.Study` (loaded from the study store).
        tracking_uri: any MLflow tracking URI; defaults to ``sqlite:///presso-runs/mlflow.db``.
        artifact_root: where a new experiment keeps artifacts (default: next to a SQLite DB).

    Returns:
        A :class:`SyncReport` (``str()`` gives a one-line summary).

    Raises:
        PressoError: the tracking store cannot be reached, or the study has no Presso metadata.

    Example::

        import optuna
        from presso.search.tracking import sync_study

        study = optuna.load_study(study_name="demo", storage="sqlite:///presso-runs/studies.db")
        print(sync_study(study, "sqlite:///presso-runs/mlflow.db"))
    """
    from presso.search._config import DEFAULT_TRACKING

    uri = tracking_uri or DEFAULT_TRACKING
    try:
        client = _client.make_client(uri)
        mirror = StudyMirror(client, study, uri, artifact_root)
        mirror.load()
        report = SyncReport(experiment_id=mirror.experiment_id)
        trials = study.get_trials(deepcopy=False)
        rows = rows_of(study, trials)
        front = front_numbers(study, rows)
        mirror.sync(trials, {r.number: r for r in rows}, front, report)
        report.retagged = mirror.retag(front)
        _close_open_parents(mirror, rows, running=any(t.state.name in ("RUNNING", "WAITING") for t in trials))
        latest = mirror.latest_parent
        if latest is not None:
            report.parent_run_id = latest.run_id
            mirror.refresh(latest.run_id, rows, front)
        return report
    except PressoError:
        raise
    except Exception as exc:  # noqa: BLE001 - one readable line instead of an MLflow traceback
        if _client.is_unreachable(exc):
            raise PressoError(f"tracking: cannot reach {redact(uri)!r}: {_client.short_reason(exc)}") from None
        raise PressoError(f"tracking: MLflow at {redact(uri)!r} refused the sync: {_client.short_reason(exc)}") from None


def _close_open_parents(mirror: StudyMirror, rows, running: bool) -> None:
    """A parent left RUNNING (the server was down when its run ended, or the driver died) is
    closed as FINISHED at the end of its last trial: at once when a later invocation exists,
    the latest one only when no trial of the study is running."""
    latest = mirror.latest_parent
    for index, parent in enumerate(mirror.parents):
        if parent.status != "RUNNING" or (running and parent is latest):
            continue
        until = mirror.parents[index + 1].start_ms if index + 1 < len(mirror.parents) else None
        ends = [to_ms(r.datetime_complete) for r in rows if r.datetime_complete is not None
                and (to_ms(r.datetime_start) or 0) >= parent.start_ms and (until is None or (to_ms(r.datetime_start) or 0) < until)]
        mirror.finish_parent(parent.run_id, "FINISHED", max(ends) if ends else parent.start_ms)
