"""The MLflow UI over a study's tracking store, with lean settings: one worker and no job
executor (MLflow's defaults start several workers, about 3 GB; this is about 0.5 GB)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from presso.errors import PressoError
from presso.search._storage import redact
from presso.search.tracking import _client

LEAN_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def ui_url(host: str = "127.0.0.1", port: int = 5000) -> str:
    """The address a browser opens for a server bound to ``host:port``.

    >>> ui_url("0.0.0.0", 5000)
    'http://127.0.0.1:5000'
    """
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


# NOTE: MLflow 3.17's UI always shows its GenAI / Model training switch and takes the view from
# the URL's ``workflowType`` (else the browser's last choice, GenAI at first): an experiment
# opened from its list lands on the GenAI overview ("Traces 0") whatever its tags say (checked in
# its JS bundle: the ``mlflow.experimentKind`` tag is read only when the switch is off). So every
# link Presso prints carries the parameter.
_CLASSIC = "workflowType=machine_learning"


def experiment_url(base_url: str, experiment_id: str) -> str:
    """The runs table of an experiment in the MLflow UI (append ``&searchFilter=...`` to filter).

    >>> experiment_url("http://127.0.0.1:5000", "1")
    'http://127.0.0.1:5000/#/experiments/1/runs?workflowType=machine_learning'
    """
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?{_CLASSIC}"


def study_urls(tracking_uri: str, base_url: str) -> dict[str, str]:
    """``{study name: runs table URL}`` for every Presso study mirrored in the tracking store."""
    client = _client.make_client(tracking_uri)
    return {e.name: experiment_url(base_url, e.experiment_id)
            for e in client.search_experiments(max_results=1000) if "presso.study" in e.tags}


def run_url(base_url: str, experiment_id: str, run_id: str, tab: str | None = None) -> str:
    """A run's page in the MLflow UI; ``tab`` such as ``"artifacts"`` opens that tab."""
    path = f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"{path}/{tab}?{_CLASSIC}" if tab else f"{path}?{_CLASSIC}"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (for tests and ``--port 0``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _port_taken(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def ui_command(tracking_uri: str, port: int, host: str) -> tuple[list[str], dict[str, str]]:
    """The ``mlflow server`` command line and environment for ``tracking_uri``.

    The store URI travels in ``MLFLOW_BACKEND_STORE_URI`` rather than on the command line,
    where ``ps`` would show a password.
    """
    _client.check_uri(tracking_uri)
    if _client.is_http(tracking_uri):
        raise PressoError(
            f"ui: {redact(tracking_uri)!r} is already an MLflow server; open it in a browser "
            "(`presso ui` serves a database store such as 'sqlite:///presso-runs/mlflow.db')"
        )
    db = _client.sqlite_path(tracking_uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    artifacts = _client.artifact_root_for(tracking_uri)
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--host", host, "--port", str(port), "--workers", "1",
        "--artifacts-destination", artifacts,
    ]
    env = {**_client.QUIET_ENV, **os.environ, **LEAN_ENV, "MLFLOW_BACKEND_STORE_URI": tracking_uri}
    return command, env


def wait_for_ui(url: str, timeout_s: float = 90.0, process: subprocess.Popen | None = None) -> None:
    """Poll ``url`` until the MLflow server answers its health check and its UI page.

    Raises:
        PressoError: the process exited, or nothing answered within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    pending = [f"{url}/health", f"{url}/"]
    while pending:
        if process is not None and process.poll() is not None:
            raise PressoError(f"ui: mlflow server exited with code {process.returncode} before answering at {url}")
        try:
            with urllib.request.urlopen(pending[0], timeout=2) as response:
                if response.status == 200:
                    pending.pop(0)
                    continue
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise PressoError(f"ui: mlflow server did not answer at {url} within {timeout_s:.0f} s")
        time.sleep(0.25)


@dataclass
class UiServer:
    """A background ``mlflow server`` (its own process group, so stopping it stops its workers)."""

    process: subprocess.Popen
    url: str
    log_path: Path
    remove_log: bool = False  # a temporary log nobody asked for goes when the server stops

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM the server's process group, then SIGKILL what is left after ``timeout_s``."""
        self._signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
        if self.remove_log:
            self.log_path.unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL the server's process group at once (what a crash looks like to clients)."""
        self._signal(signal.SIGKILL)
        self.process.wait(10)

    def _signal(self, sig) -> None:
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass

    def __enter__(self) -> UiServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def spawn_ui(tracking_uri: str | None = None, port: int | None = None, host: str = "127.0.0.1", *,
             timeout_s: float = 90.0, log_path: str | os.PathLike | None = None) -> UiServer:
    """Start the MLflow UI in the background and return once it answers.

    Args:
        tracking_uri: the database store (default ``sqlite:///presso-runs/mlflow.db``).
        port: TCP port; ``None`` or 0 picks a free one.
        host: interface to bind; ``127.0.0.1`` keeps it local.
        timeout_s: how long to wait for the first answer (MLflow takes 10-15 s here).
        log_path: file for the server's output (default: a temporary file).

    Raises:
        PressoError: the port is taken, or the server exits or stays silent (the message
            ends with the last lines of its log).

    Example::

        with spawn_ui("sqlite:///presso-runs/mlflow.db") as ui:
            print(ui.url)
    """
    from presso.search._config import DEFAULT_TRACKING

    uri = tracking_uri or DEFAULT_TRACKING
    port = port or free_port(host if ":" not in host else "127.0.0.1")
    if _port_taken(host, port):
        raise PressoError(f"ui: port {port} on {host} is in use; pass another --port")
    command, env = ui_command(uri, port, host)
    temporary = log_path is None
    if temporary:
        handle, name = tempfile.mkstemp(prefix="presso-mlflow-ui-", suffix=".log")
        os.close(handle)
        log_path = name
    log_path = Path(log_path)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    server = UiServer(process, ui_url(host, port), log_path, remove_log=temporary)
    try:
        wait_for_ui(server.url, timeout_s, process)
    except PressoError as exc:
        server.remove_log = False  # the message points at it
        server.stop(5)
        tail = " | ".join(log_path.read_text(errors="replace").strip().splitlines()[-3:])
        raise PressoError(f"{exc}; log {log_path}: {redact(tail)}") from None
    return server


def start_ui(tracking_uri: str | None = None, port: int = 5000, host: str = "127.0.0.1", *, echo=print) -> int:
    """Serve the MLflow UI over a study's tracking store until Ctrl-C (``presso ui``).

    Prints the URL once the server answers. Binds ``127.0.0.1`` unless ``host`` says
    otherwise (``0.0.0.0`` exposes the UI, which has no login, to the network).

    Returns:
        The server's exit code (0 after Ctrl-C).

    Raises:
        PressoError: an ``http://`` tracking URI, a taken port, or a server that fails to start.
    """
    from presso.search._config import DEFAULT_TRACKING

    uri = tracking_uri or DEFAULT_TRACKING
    log_dir = _client.sqlite_path(uri)
    log_path = (log_dir.parent / "mlflow-ui.log") if log_dir is not None else None
    echo(f"Starting the MLflow UI over {redact(uri)} (log: {log_path or 'a temporary file'}) ...")
    server = spawn_ui(uri, port, host, log_path=log_path)
    try:  # NOTE: Ctrl-C from here on stops the server cleanly
        try:
            urls = study_urls(uri, server.url)
        except Exception:  # noqa: BLE001 - the UI works without the links
            urls = {}
        echo(f"MLflow UI: {server.url}  (Ctrl-C to stop)")
        for name, url in urls.items():
            echo(f"  runs of study {name!r}: {url}")
        if urls:
            echo("  (opened from MLflow's experiment list, an experiment shows the GenAI overview; "
                 "these links, or the sidebar's 'Model training' switch, show the runs)")
        return server.process.wait()
    except KeyboardInterrupt:
        server.stop()
        return 0
