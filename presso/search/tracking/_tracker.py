"""``MlflowTracker``: follows a running study and mirrors it to MLflow from the driver process.

The hooks only queue events; one background thread does the MLflow calls, so a slow or dead
tracking server never delays a trial. Child runs are built from the stored ``FrozenTrial``, so
trials run in other processes or on Ray workers are logged the same way.
"""

from __future__ import annotations

import math
import queue
import threading
import time

from presso.search._observer import StudyObserver
from presso.search._records import plan_source, row_from_trial, rows_of
from presso.search._storage import redact
from presso.search.tracking import _client
from presso.search.tracking._mirror import StudyMirror, SyncReport, front_numbers
from presso.search.tracking._summary import to_ms

logger = _client.logger


def _now_ms() -> int:
    return int(time.time() * 1000)


class MlflowTracker(StudyObserver):
    """Mirror a study to MLflow while it runs.

    One experiment per study (its name), a parent run per ``presso run`` invocation (tagged
    ``presso.invocation`` and ``presso.previous_run_id``), and a child run per finished trial
    (params: plan summaries and the sampler's choices; metrics: objectives, measurements,
    timings; tags: ``presso.trial_number``, ``presso.state``, ``presso.failure``,
    ``presso.pareto``). The parent run carries the Pareto plots, the front as CSV and the best
    plan per objective, refreshed when the front moves (at most every ``refresh_min_s``) or
    every ``refresh_every`` trials, and at the end.

    Files handed over by ``on_files`` (a task model's classification report, text and JSON)
    go on the front trials' runs, and the uncompressed model's on the parent run under
    ``uncompressed/``. They are not in the study store, so ``presso sync`` cannot backfill them.

    If the tracking store cannot be reached the study goes on: one warning is logged, the
    tracker retries every ``retry_s`` seconds and backfills what it missed once it is back, and
    :func:`~presso.search.tracking.sync_study` (``presso sync``) fills in anything still missing.

    Args:
        tracking_uri: any MLflow tracking URI (``sqlite:///presso-runs/mlflow.db`` by default).
        artifact_root: artifact location of a new experiment (default: ``mlartifacts/`` next
            to a SQLite database; the server's choice for ``http://`` URIs).
        refresh_every: refresh the study artifacts at least every this many trials.
        refresh_min_s: and at most once per this many seconds (except at the end).
        retry_s: after a failure, wait this long before trying the store again.
        flush_timeout_s: how long ``on_run_end`` waits for pending logging.

    Example::

        from presso.search.tracking import MlflowTracker

        tracker = MlflowTracker("sqlite:///presso-runs/mlflow.db")
        tracker.on_run_start(study, config)
        ...  # after each trial is told: tracker.on_trial_end(study, frozen_trial)
        tracker.on_run_end(study, "FINISHED")
    """

    def __init__(self, tracking_uri: str | None = None, *, artifact_root: str | None = None,
                 refresh_every: int = 10, refresh_min_s: float = 15.0, retry_s: float = 30.0,
                 flush_timeout_s: float = 60.0):
        from presso.search._config import DEFAULT_TRACKING

        self.tracking_uri = tracking_uri or DEFAULT_TRACKING
        _client.check_uri(self.tracking_uri)
        self.artifact_root = artifact_root
        self.refresh_every = refresh_every
        self.refresh_min_s = refresh_min_s
        self.retry_s = retry_s
        self.flush_timeout_s = flush_timeout_s
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._warned = False
        # Owned by the worker thread.
        self._client = None
        self._mirror: StudyMirror | None = None
        self._study = None
        self._config = None
        self._start_ms: int | None = None
        self._parent_id: str | None = None
        self._end: tuple[str, int] | None = None
        self._pending: dict[int, object] = {}
        self._files: dict[int, dict[str, str]] = {}  # trial files waiting for the trial's run
        self._run_files: dict[str, str] = {}
        self._run_files_on: str | None = None  # the parent run that has them
        self._online = False
        self._resync = True
        self._retry_at = 0.0
        self._front: set[int] | None = None
        self._artifacts_dirty = False
        self._since_refresh = 0
        self._last_refresh = -math.inf
        self.seconds_spent = 0.0
        """Wall time the worker spent logging (for overhead reports)."""

    # -- hooks (driver thread): queue and return ---------------------------------------------
    def on_run_start(self, study, config) -> None:
        self._put(("start", study, config, _now_ms()))

    def on_trial_end(self, study, trial) -> None:
        self._put(("trial", study, trial))

    def on_files(self, study, trial_number, files) -> None:
        self._put(("files", trial_number, dict(files)))

    def on_run_end(self, study, status: str) -> None:
        self._put(("end", study, status, _now_ms()))
        if not self.flush(self.flush_timeout_s) and not self._warned:
            self._warned = True
            logger.warning(
                "MLflow tracking: logging did not finish within %.0f s; `presso sync --study %s` fills MLflow in later",
                self.flush_timeout_s, getattr(study, "study_name", "?"),
            )
        self._put(("stop",))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is logged (or given up on). False on timeout."""
        if self._thread is None:
            return True
        done = threading.Event()
        self._put(("flush", done))
        return done.wait(timeout)

    @property
    def online(self) -> bool:
        """Whether the last attempt to reach the tracking store worked."""
        return self._online

    @property
    def experiment_id(self) -> str | None:
        return self._mirror.experiment_id if self._mirror else None

    @property
    def parent_run_id(self) -> str | None:
        """The parent run of the current (or last) invocation, once created."""
        return self._parent_id

    def _put(self, item) -> None:
        try:
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    if item[0] in ("stop", "flush"):
                        if item[0] == "flush":
                            item[1].set()
                        return
                    self._thread = threading.Thread(target=self._loop, name="presso-mlflow", daemon=True)
                    self._thread.start()
            self._queue.put(item)
        except Exception:  # noqa: BLE001 - a hook must never stop the study
            logger.debug("MLflow tracking: could not queue %s", item[0], exc_info=True)

    # -- worker thread -------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            items = [self._queue.get()]
            while True:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop, flushes = False, []
            for item in items:
                kind = item[0]
                if kind == "start":
                    _, self._study, self._config, self._start_ms = item
                    self._parent_id, self._end, self._resync = None, None, True
                    self._front, self._artifacts_dirty, self._since_refresh = None, False, 0
                elif kind == "trial":
                    self._study = item[1]
                    self._pending[item[2].number] = item[2]
                    self._since_refresh += 1
                elif kind == "files":
                    if item[1] is None:
                        self._run_files, self._run_files_on = item[2], None
                    else:
                        self._files[item[1]] = item[2]
                elif kind == "end":
                    self._study, self._end = item[1], (item[2], item[3])
                elif kind == "flush":
                    flushes.append(item[1])
                elif kind == "stop":
                    stop = True
            started = time.perf_counter()
            try:
                self._work()
            except Exception as exc:  # noqa: BLE001 - last resort: never let the thread die silently
                self._went_offline(exc)
            self.seconds_spent += time.perf_counter() - started
            for done in flushes:
                done.set()
            if stop:
                with self._lock:
                    self._thread = None
                return

    def _work(self) -> None:
        if self._study is None:
            return
        final = self._end is not None
        if not self._online and not final and time.monotonic() < self._retry_at:
            return  # offline: the trials wait in _pending for the next attempt
        try:
            self._step(final)
        except Exception as exc:  # noqa: BLE001
            if self._mirror is None or _client.is_unreachable(exc):
                self._went_offline(exc)
            else:
                logger.warning("MLflow tracking: %s", _client.short_reason(exc))
                self._pending.clear()
            return
        if not self._online and self._warned:
            logger.info("MLflow tracking: %s is reachable again; missed trials were backfilled", redact(self.tracking_uri))
        self._online = True

    def _step(self, final: bool) -> None:
        study = self._study
        if self._client is None:
            self._client = _client.make_client(self.tracking_uri)
        if self._mirror is None or self._mirror.study is not study or self._resync:
            self._mirror = StudyMirror(self._client, study, self.tracking_uri, self.artifact_root)
            self._mirror.load()
        mirror = self._mirror
        trials = study.get_trials(deepcopy=False)
        rows = rows_of(study, trials)
        by_number = {r.number: r for r in rows}
        front = front_numbers(study, rows)
        resync, self._resync = self._resync, False
        start = self._start_ms
        pending = set(self._pending)

        def earlier(t) -> bool:  # finished before this invocation started: an earlier one ran it
            return t.number not in pending and (start is None or (to_ms(t.datetime_complete) or 0) < start)

        if resync:  # earlier invocations first, so a backfill parent comes before this run's
            mirror.sync(trials, by_number, front, SyncReport(mirror.experiment_id), only=earlier)
        if self._parent_id is None and start is not None:
            self._parent_id = mirror.new_parent(start, self._config)
        for number in sorted(self._pending):
            trial = self._pending[number]
            try:
                mirror.log_trial(trial, self._parent_id, number in front, row_from_trial(trial, plan_source(mirror.info)))
            except Exception as exc:  # noqa: BLE001
                if _client.is_unreachable(exc):
                    raise
                logger.warning("MLflow tracking: trial %d was not logged: %s", number, _client.short_reason(exc))
            del self._pending[number]
        self._log_files(mirror, front)
        if resync and start is not None:
            mirror.sync(trials, by_number, front, SyncReport(mirror.experiment_id), default_parent=self._parent_id,
                        only=lambda t: not earlier(t))
        mirror.retag(front)
        moved = front != self._front
        if moved:
            self._artifacts_dirty = True
            self._front = front
        parent = self._parent_id or (mirror.latest_parent.run_id if mirror.latest_parent else None)
        due = final or (
            (self._artifacts_dirty or self._since_refresh >= self.refresh_every)
            and time.monotonic() - self._last_refresh >= self.refresh_min_s
        )
        if parent is not None and (due or moved):  # progress metrics only when something moved
            try:
                mirror.refresh(parent, rows, front, artifacts=due)
            except Exception as exc:  # noqa: BLE001
                if _client.is_unreachable(exc):
                    raise
                logger.warning("MLflow tracking: study artifacts not refreshed: %s", _client.short_reason(exc))
            if due:
                self._artifacts_dirty, self._since_refresh, self._last_refresh = False, 0, time.monotonic()
        if final and self._parent_id is not None:
            status, end_ms = self._end
            mirror.finish_parent(self._parent_id, status, end_ms)
            self._end, self._start_ms = None, None

    def _log_files(self, mirror: StudyMirror, front: set[int]) -> None:
        """Attach the files of trials logged by now (front trials only: a trial off the front
        never joins it later) and the invocation's files to its parent run."""
        if self._run_files and self._parent_id is not None and self._run_files_on != self._parent_id:
            mirror.log_files(self._parent_id, self._run_files)
            self._run_files_on = self._parent_id
        for number in sorted(self._files):
            child = mirror.lookup(number, remote=False)
            if child is None:
                continue  # its trial has not been logged yet (workers may hand files over first)
            if number in front:
                mirror.log_files(child.run_id, self._files[number])
            del self._files[number]

    def _went_offline(self, exc: BaseException) -> None:
        self._online = False
        self._resync = True
        self._retry_at = time.monotonic() + self.retry_s
        if not self._warned:
            self._warned = True
            name = getattr(self._study, "study_name", "NAME")
            logger.warning(
                "MLflow tracking: cannot log to %s (%s); the study goes on, and `presso sync --study %s` fills MLflow in later",
                redact(self.tracking_uri), _client.short_reason(exc), name,
            )
        else:
            logger.debug("MLflow tracking: still unreachable: %s", _client.short_reason(exc))
