"""The SQL study store: Optuna's RDBStorage behind an SQLAlchemy URL, with heartbeats so a
trial whose worker died is failed and retried."""

from __future__ import annotations

import re
import threading
import warnings
from pathlib import Path

from presso.errors import PressoError

_PASSWORD = re.compile(r"(://[^:/@]+:)([^@]+)(@)")


def redact(url: str | None) -> str | None:
    """Hide the password of a URL (``postgresql://u:***@host/db``) before it is printed or logged."""
    if url is None:
        return None
    return _PASSWORD.sub(r"\1***\3", url)


def _check_url(url: str) -> None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise PressoError(
            f"storage: {redact(url)!r} is not an SQLAlchemy URL; allowed forms: 'sqlite:///path.db', "
            "'postgresql+psycopg://user@host:5432/db', 'mysql+pymysql://user@host/db'"
        ) from None
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def quiet_optuna_warnings() -> None:
    """Heartbeats and the retry callback are marked experimental, and Optuna warns that
    heartbeats are meant for ``Study.optimize``; Presso drives ask/tell with its own heartbeat
    thread (see :func:`heartbeat`), so these warnings say nothing useful to a user."""
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


def open_storage(url: str, *, heartbeat_s: int = 10, grace_s: int = 30, max_retry: int = 3):
    """Open (creating tables if needed) the study store at ``url``.

    Raises:
        PressoError: malformed URL, missing driver or unreachable server (password redacted).
    """
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    quiet_optuna_warnings()
    _check_url(url)
    if url.startswith("sqlite"):
        # Several local workers share one SQLite file: wait for the write lock instead of
        # failing with "database is locked" (PostgreSQL is the store for real concurrency).
        engine_kwargs = {"connect_args": {"timeout": 60}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    try:
        storage = optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat_s,
            grace_period=grace_s,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry),
        )
    except ModuleNotFoundError as exc:
        raise PressoError(
            f"storage: the database driver {exc.name!r} for {redact(url)!r} is not installed; "
            "install presso[postgres] (psycopg) or presso[mysql] (pymysql)"
        ) from None
    except (SQLAlchemyError, OSError, ValueError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise PressoError(f"storage: cannot open {redact(url)!r}: {redact(reason)}") from None
    if storage.engine.dialect.name == "sqlite" and storage.engine.url.database not in (None, "", ":memory:"):
        _serialize_sqlite_transactions(storage.engine)
    return storage


def load_existing_study(name: str, storage_url: str):
    """Open a study that must exist (for status, pareto, export, warm starts...).

    Raises:
        PressoError: no study ``name`` in the store (the message lists those there).
    """
    import optuna

    storage = open_storage(storage_url)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        known = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        shown = ", ".join(repr(k) for k in known[:10]) or "none"
        raise PressoError(f"study: no study named {name!r} in {redact(storage_url)!r}; studies there: {shown}") from None


def _serialize_sqlite_transactions(engine) -> None:
    """Make every SQLite transaction take the write lock when it begins (``BEGIN IMMEDIATE``).

    NOTE: Optuna claims a WAITING trial with ``SELECT ... FOR UPDATE`` and then an UPDATE;
    SQLite ignores ``FOR UPDATE`` and pysqlite opens the transaction only at the UPDATE, so two
    workers could both claim the same trial (measured here: 31 of 200 enqueued trials were
    popped twice by 4 processes) and fail the same stale trial twice (two retries). Taking the
    lock at BEGIN makes each read-then-write atomic; the busy timeout makes writers queue.
    This is SQLAlchemy's documented pysqlite recipe, with IMMEDIATE instead of a plain BEGIN.
    """
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_driver_transactions(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)
        # WAL: a commit appends to the log instead of syncing the whole file; with
        # synchronous=NORMAL a crash of a process loses nothing (a power cut may lose the
        # last commits). Several times fewer fsyncs per trial under K workers.
        dbapi_connection.execute("PRAGMA journal_mode=WAL")
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened while creating the tables predate the hooks


class Heartbeats:
    """One thread that records a heartbeat for every trial in flight, whatever runs it
    (Optuna does this inside ``study.optimize``; Presso drives ask/tell itself). A killed
    driver stops beating, so its trials go stale after ``grace_s`` and are retried."""

    def __init__(self, storage, interval_s: float):
        self.storage, self.interval_s = storage, interval_s
        self.ids: set[int] = set()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="presso-heartbeats", daemon=True)

    def _run(self):
        while not self.stop.wait(self.interval_s):
            with self.lock:
                ids = list(self.ids)
            for trial_id in ids:
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception:  # noqa: BLE001 - a missed beat must not stop the study
                    pass

    def add(self, trial_id: int) -> None:
        with self.lock:
            self.ids.add(trial_id)

    def discard(self, trial_id: int) -> None:
        with self.lock:
            self.ids.discard(trial_id)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
