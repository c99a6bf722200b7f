"""The SQL study store: Optuna's RDBStorage behind an SQLAlchemy URL, with heartbeats so a
trial whose worker died is failed and retried."""

from __future__ import annotations

import re
import threading
import warnings
from contextlib import contextmanager
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
        return optuna.storages.RDBStorage(
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


@contextmanager
def heartbeat(storage, trial_id: int, interval_s: float):
    """Record a heartbeat for ``trial_id`` every ``interval_s`` seconds while the block runs
    (Optuna does this inside ``study.optimize``; Presso drives ask/tell itself)."""
    stop = threading.Event()

    def beat():
        while True:
            try:
                storage.record_heartbeat(trial_id)
            except Exception:  # noqa: BLE001 - a missed beat must not kill the trial
                pass
            if stop.wait(interval_s):
                return

    thread = threading.Thread(target=beat, name=f"presso-heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
