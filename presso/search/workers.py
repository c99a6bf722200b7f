"""The ``workers`` executor: local worker processes (``presso run --workers K``).

The driver runs the one study loop (:func:`~presso.search.run_study`: ask, budget,
heartbeats, tell, observers); each of the K worker processes builds one
:class:`~presso.search.Evaluator` when it starts and then evaluates the plans it is sent over
a pipe, as the Ray actors do. Only the driver talks to the store, so any number of workers
share one SQLite file without queueing for its write lock.

A worker that dies mid-trial (killed, host out of memory) loses its trial: the loop records it
as ``lost`` and queues the plan again at once (a plan that kills its worker three times fails,
counted), and the worker is restarted (at most ``2 K`` times a run).

Signals: the workers live in their own session, so Ctrl-C reaches the driver only; it records
the trials in flight as ``interrupted`` and stops the workers. A worker whose parent dies
(SIGKILL) exits within a second; the driver's trials then go stale and are retried on resume.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from presso.errors import PressoError
from presso.search._executor import Executor
from presso.search._jobs import Lost, WorkerView, worker_study

EXIT_USAGE = 2  # the worker could not build its Evaluator (bad model, bad space): do not restart it
STOP_WAIT_S = 10.0  # how long stopped workers get to exit before they are killed


@dataclass
class _Worker:
    index: int
    log: Path
    proc: subprocess.Popen | None = None
    conn: object = None  # a multiprocessing Connection; None once the worker is gone for good
    ready: bool = False
    job: int | None = None
    promote: object = None

    @property
    def where(self) -> str:
        import socket

        return f"{socket.gethostname()}:{self.proc.pid}" if self.proc else ""


class ProcessPoolExecutor(Executor):
    """``config.workers`` worker processes; each evaluates one plan at a time.

    Args:
        config: the study.
        max_restarts: how many dead workers are restarted in one run (default ``2 * workers``).
    """

    name = "workers"

    def __init__(self, config, max_restarts: int | None = None):
        super().__init__(config)
        self.max_restarts = 2 * config.workers if max_restarts is None else max_restarts
        self.restarts, self.count, self.keep_logs = 0, 0, False
        self.study_data, self.base_dir, self.space_dict = worker_study(config)
        self.log_dir = Path(tempfile.mkdtemp(prefix=f"presso-workers-{os.getpid()}-"))
        self.workers = [_Worker(i, self.log_dir / f"worker-{i}.log") for i in range(config.workers)]
        self.description: dict | None = None

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        env.setdefault("RAY_AUTH_MODE", "disabled")
        if "OMP_NUM_THREADS" not in env:
            # NOTE: K workers each using every core slow each other down; split the cores.
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // len(self.workers)))
        return env

    def _spawn(self, worker: _Worker) -> None:
        import multiprocessing

        ours, theirs = multiprocessing.Pipe()
        command = [sys.executable, "-m", "presso.search.workers", "--fd", str(theirs.fileno()),
                   "--parent", str(os.getpid())]
        with open(worker.log, "ab") as log:
            worker.proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=self._env(),
                pass_fds=(theirs.fileno(),), start_new_session=True,  # Ctrl-C reaches the driver only
            )
        theirs.close()
        ours.send((self.study_data, self.base_dir))
        worker.conn, worker.ready, worker.job, worker.promote = ours, False, None, None

    def start(self) -> WorkerView:
        for worker in self.workers:
            self._spawn(worker)
        while not all(w.ready for w in self.workers if w.conn is not None):
            self._receive_from([w for w in self.workers if w.conn is not None and not w.ready], 1.0)
            if not any(w.conn is not None for w in self.workers):
                raise PressoError(f"workers: every worker stopped before it was ready (logs: {self.log_dir})")
        return WorkerView(self.config, self.space_dict, self.description)

    def free(self) -> int:
        self._receive_from([w for w in self.workers if w.conn is not None and not w.ready], 0)
        if not any(w.conn is not None for w in self.workers):
            raise PressoError(
                f"workers: every worker stopped before the budget was reached ({self.restarts} restarts); the "
                f"study is kept: run the same command to resume (worker logs: {self.log_dir})"
            )
        return sum(w.conn is not None and w.ready and w.job is None for w in self.workers)

    def submit(self, job, promote=None) -> int:
        worker = next(w for w in self.workers if w.conn is not None and w.ready and w.job is None)
        self.count += 1
        worker.job, worker.promote = self.count, promote
        try:
            worker.conn.send(("start", job))
        except OSError:
            pass  # it died: the next wait reads its end of the pipe and reports the trial lost
        return self.count

    def wait(self, timeout_s: float):
        busy = [w for w in self.workers if w.conn is not None and (w.job is not None or not w.ready)]
        if not busy:
            time.sleep(timeout_s)
            return []
        return self._receive_from(busy, timeout_s)

    def _receive_from(self, workers: list[_Worker], timeout_s: float):
        from multiprocessing.connection import wait

        results = []
        by_conn = {id(w.conn): w for w in workers}
        for conn in wait([w.conn for w in workers], timeout_s):
            worker = by_conn[id(conn)]
            try:
                kind, body = conn.recv()
            except (EOFError, OSError):
                results.extend(self._died(worker))
                continue
            if kind == "ready":
                worker.ready = True
                self.description = self.description or body
            elif kind == "error":
                self.close()
                raise PressoError(f"workers: worker {worker.index} stopped: {body}")
            elif kind == "low":  # multi-fidelity: the driver decides, the worker goes on
                conn.send(("decide", worker.promote(body)))
            else:
                results.append((worker.job, body))
                worker.job, worker.promote = None, None
        return results

    def _died(self, worker: _Worker) -> list:
        code = worker.proc.wait()
        lost = [(worker.job, Lost(f"worker {worker.index} died during this trial (it {_describe_exit(code)})"))] if worker.job else []
        worker.conn.close()
        worker.conn, worker.job = None, None
        self.keep_logs = True
        if self.restarts < self.max_restarts:
            self.restarts += 1
            print(f"warning: worker {worker.index} {_describe_exit(code)}; its trial is retried; restarting it "
                  f"(log: {worker.log})", file=sys.stderr)
            self._spawn(worker)
        else:
            print(f"warning: worker {worker.index} {_describe_exit(code)}; not restarted ({self.restarts} restarts "
                  f"so far; log: {worker.log})", file=sys.stderr)
        return lost

    def where(self, handle: int) -> str:
        return next((w.where for w in self.workers if w.job == handle), "")

    def close(self) -> None:
        live = [w for w in self.workers if w.proc is not None and w.proc.poll() is None]
        for worker in live:
            _signal(worker.proc, signal.SIGTERM)
        deadline = time.monotonic() + STOP_WAIT_S
        for worker in live:
            try:
                worker.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal(worker.proc, signal.SIGKILL)
                worker.proc.wait()
        for worker in self.workers:
            if worker.conn is not None:
                worker.conn.close()
                worker.conn = None
        if not self.keep_logs:
            shutil.rmtree(self.log_dir, ignore_errors=True)  # kept after a death: the warning names it


def _signal(proc: subprocess.Popen, signum: int) -> None:
    try:
        proc.send_signal(signum)
    except ProcessLookupError:
        pass


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def run_study_workers(config, **kwargs):
    """:func:`~presso.search.run_study` on ``config.workers`` local processes (see the module).

    Example::

        config = load_study_file("examples/tiny.yaml").with_overrides(workers=2)
        summary = run_study_workers(config)
    """
    from presso.search._driver import run_study

    return run_study(config, executor=ProcessPoolExecutor(config), **kwargs)


# --------------------------------------------------------------------------------------------
# The worker process: ``python -m presso.search.workers --fd FD --parent PID``.


def _watch_parent(parent_pid: int) -> None:
    def watch():
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(130)  # the driver died: its trials go stale and are retried on resume

    threading.Thread(target=watch, name="presso-parent-watch", daemon=True).start()


def _worker_main(argv: list[str] | None = None) -> int:
    import argparse
    from multiprocessing.connection import Connection

    parser = argparse.ArgumentParser(prog="python -m presso.search.workers")
    parser.add_argument("--fd", type=int, required=True, help="this worker's end of the driver's pipe")
    parser.add_argument("--parent", type=int, required=True, help="the driver's pid (exit when it dies)")
    args = parser.parse_args(argv)
    _watch_parent(args.parent)
    conn = Connection(args.fd)
    from presso.search._config import study_from_dict
    from presso.search._jobs import JobRunner, describe, failure_reason

    data, base_dir = conn.recv()
    try:
        from presso.search._evaluator import Evaluator

        evaluator = Evaluator(study_from_dict(data, base_dir=base_dir))
    except Exception as exc:  # noqa: BLE001 - reported to the driver, which stops the run with it
        conn.send(("error", failure_reason(exc)))
        return EXIT_USAGE
    conn.send(("ready", describe(evaluator)))
    runner = JobRunner(evaluator)
    while True:
        try:
            kind, body = conn.recv()
        except EOFError:  # the driver closed the pipe
            return 0
        conn.send(runner.start(body) if kind == "start" else runner.decide(body))


if __name__ == "__main__":
    sys.exit(_worker_main())
