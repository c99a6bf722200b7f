"""MLflow plumbing: where artifacts go, a client that fails fast, paged searches, batched logging,
and telling "the server is unreachable" apart from "MLflow refused this value"."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from urllib.parse import urlparse

from presso.errors import PressoError
from presso.search._storage import redact

logger = logging.getLogger("presso.tracking")

# Without these MLflow retries a dead server 7 times with exponential backoff (minutes) and
# waits 120 s per request. Values a user has set in the environment win.
FAST_FAIL_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    # MLflow prints "View run ... at: URL" to stdout for every run ended over HTTP.
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
ARTIFACTS_DIR = "mlartifacts"
KIND_TAG = "mlflow.experimentKind"
# MLflow 3 builds whose UI hides the GenAI / Model training switch pick an experiment's view by
# this tag; 3.17 always shows the switch and reads the URL instead (see _ui.experiment_url).
EXPERIMENT_TAGS = {KIND_TAG: "custom_model_development"}
_SQLITE = re.compile(r"^sqlite:///(?P<path>.+)$")


def is_http(uri: str) -> bool:
    return urlparse(uri).scheme in ("http", "https")


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative paths are relative to the CWD)."""
    match = _SQLITE.match(uri)
    if not match or match.group("path") in (":memory:", ""):
        return None
    return Path(match.group("path").split("?", 1)[0]).expanduser()


def artifact_root_for(uri: str, artifact_root: str | None = None) -> str | None:
    """Where new experiments keep their artifacts.

    An HTTP server decides itself (``None``). A SQLite store keeps them in ``mlartifacts/``
    next to the database file; another database (PostgreSQL, MySQL) in ``./presso-runs/mlartifacts``
    unless ``artifact_root`` says otherwise. MLflow needs one for SQL stores, and its own default
    (``./mlruns`` in whatever the CWD happens to be) scatters files.
    """
    if artifact_root:
        return artifact_root if "://" in artifact_root else Path(artifact_root).expanduser().resolve().as_uri()
    if is_http(uri):
        return None
    db = sqlite_path(uri)
    base = db.resolve().parent if db is not None else Path("presso-runs").resolve()
    return (base / ARTIFACTS_DIR).as_uri()


def check_uri(uri: str) -> None:
    scheme = urlparse(uri).scheme
    if "://" not in uri and scheme != "databricks":
        raise PressoError(
            f"tracking URI: got {redact(uri)!r}; allowed: 'sqlite:///presso-runs/mlflow.db', "
            "'http://127.0.0.1:5000', 'postgresql://user@host/db' or any MLflow tracking URI"
        )


# Presso's use of MLflow sends no usage telemetry unless the user opts in by setting it.
QUIET_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true"}


def make_client(uri: str):
    """An :class:`mlflow.MlflowClient` for ``uri``; creates the SQLite folder, sets fast-fail
    HTTP settings and no telemetry (unless the environment says otherwise) and silences
    MLflow's schema-migration chatter."""
    check_uri(uri)
    for key, value in {**QUIET_ENV, **(FAST_FAIL_ENV if is_http(uri) else {})}.items():
        os.environ.setdefault(key, value)
    db = sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        _prefer_wal(db)
    for name in ("mlflow.store.db.utils", "alembic", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _prefer_wal(db: Path) -> None:
    """Put the MLflow SQLite file in WAL mode (a setting kept in the file): half the cost of a
    trial's logging here (fewer fsyncs per commit), and the UI reads while the tracker writes."""
    import sqlite3
    from contextlib import closing

    try:
        with closing(sqlite3.connect(db, timeout=5)) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error:  # busy or read-only: MLflow works in the default mode too
        logger.debug("MLflow tracking: could not switch %s to WAL", db)


def get_or_create_experiment(client, name: str, artifact_location: str | None) -> str:
    """The id of the experiment named ``name`` (the study name), created if missing.

    Raises:
        PressoError: the experiment exists but was deleted (MLflow keeps the name taken).
    """
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            tags = {**EXPERIMENT_TAGS, "presso.study": name}
            return client.create_experiment(name, artifact_location=artifact_location, tags=tags)
        except Exception:  # noqa: BLE001 - lost a race with another process creating it
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage != "deleted" and KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, KIND_TAG, EXPERIMENT_TAGS[KIND_TAG])
    if experiment.lifecycle_stage == "deleted":
        raise PressoError(
            f"tracking: MLflow experiment {name!r} was deleted; restore it in the MLflow UI "
            "or remove it for good with `mlflow gc`, then sync again"
        )
    return experiment.experiment_id


def search_all(client, experiment_id: str, filter_string: str) -> list:
    """Every active run of the experiment matching ``filter_string`` (all pages)."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def log_batch(client, run_id: str, *, metrics=None, params=None, tags=None, timestamp_ms: int, step: int = 0) -> None:
    """Log dicts of metrics, params and tags in as few calls as MLflow allows
    (100 params + tags and 1000 entities per call)."""
    from mlflow.entities import Metric, Param, RunTag

    metric_list = [Metric(k, float(v), timestamp_ms, step) for k, v in (metrics or {}).items()]
    small = [Param(k, str(v)) for k, v in (params or {}).items()] + [RunTag(k, str(v)) for k, v in (tags or {}).items()]
    while metric_list or small:
        chunk_small, small = small[:100], small[100:]
        chunk_metrics, metric_list = metric_list[: 1000 - len(chunk_small)], metric_list[1000 - len(chunk_small):]
        client.log_batch(
            run_id,
            metrics=chunk_metrics,
            params=[p for p in chunk_small if isinstance(p, Param)],
            tags=[t for t in chunk_small if isinstance(t, RunTag)],
        )


_UNREACHABLE_CODES = {"TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR", "RESOURCE_EXHAUSTED", "REQUEST_LIMIT_EXCEEDED"}


def is_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` means the tracking store cannot be reached (retry later, backfill with
    ``presso sync``) rather than a value MLflow rejected (skip that trial, say why)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
            return True
        module = type(exc).__module__ or ""
        name = type(exc).__name__
        if module.startswith(("requests", "urllib3")) or (
            module.startswith("sqlalchemy") and name in ("OperationalError", "InterfaceError", "TimeoutError")
        ):
            return True
        if module.startswith("mlflow"):
            text = str(exc)
            if "API request to" in text or getattr(exc, "error_code", None) in _UNREACHABLE_CODES:
                return True
        exc = exc.__cause__ or exc.__context__
    return False


def short_reason(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = redact(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."
