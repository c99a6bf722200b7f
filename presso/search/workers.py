"""Local worker processes that share one SQL study store (``presso run --workers K``).

This is Optuna's own distributed recipe on one machine: K processes each open the same
study in the same store and run the ask/tell loop of :func:`~presso.search.run_study`, each
with its own :class:`~presso.search.Evaluator` built once. The parent process runs no trial:
it starts the workers, follows the store (progress bar, observers such as MLflow, which
therefore run in one process only), restarts a worker that died, and returns the
:class:`~presso.search.RunSummary`.

The budget stays exact however the workers race: a worker that asks a trial beyond the
budget marks it PRUNED with ``cancelled`` (see ``presso.search._driver``); a dead worker's
trial goes stale after ``grace_s`` and is retried by a surviving worker.

Signals: Ctrl-C or SIGTERM to the parent stops every worker (each marks its running trial
``interrupted`` and queues a retry). The workers live in their own process group and watch
their parent: if the parent is killed outright (SIGKILL), they stop the same way within a
second. Running the same command again resumes the study.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from presso.errors import PressoError
from presso.search._config import StudyConfig, study_from_dict
from presso.search._driver import RunSummary, _Notifier
from presso.search._observer import StudyObserver

EXIT_USAGE = 2  # the worker met a PressoError (bad study, incompatible store): do not restart it
EXIT_INTERRUPTED = 130
POLL_S = 0.5
SQLITE_WORKERS = 4  # measured here: 4 workers, 200 trials, no "database is locked"
STOP_WAIT_S = 60.0  # how long stopped workers get to record their interrupted trials


@dataclass
class _Worker:
    index: int
    log: Path
    proc: subprocess.Popen | None = None
    starts: int = 0
    exit_codes: list[int] = field(default_factory=list)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class _FileDrop(StudyObserver):
    """In a worker: leaves ``on_files`` (classification reports) in a folder as JSON
    (``run.json``, ``trial_<n>.json``) for the parent, which hands them to its observers."""

    def __init__(self, folder: Path):
        self.folder = folder

    def on_files(self, study, trial_number, files) -> None:
        name = "run.json" if trial_number is None else f"trial_{trial_number}.json"
        tmp = self.folder / f".{name}.{os.getpid()}"
        tmp.write_text(json.dumps(files))
        os.replace(tmp, self.folder / name)  # the parent never reads half a file


def _deliver_files(folder: Path, study, notify, run_sent: bool) -> bool:
    """Hand the files the workers left to the observers (each once); True once ``run.json`` went."""
    for path in sorted(folder.glob("*.json")):
        if path.name == "run.json":
            if not run_sent:
                notify("on_files", study, None, json.loads(path.read_text()))
                run_sent = True
            continue
        notify("on_files", study, int(path.stem.removeprefix("trial_")), json.loads(path.read_text()))
        path.unlink()
    return run_sent


class _WorkerPool:
    """Starts, watches, restarts and stops the worker processes."""

    def __init__(self, config: StudyConfig, log_dir: Path, max_restarts: int):
        self.config, self.log_dir, self.max_restarts = config, log_dir, max_restarts
        self.restarts = 0
        self.usage_error = False
        self.config_path = log_dir / "study.json"
        data = replace(config, workers=1, backend="local").to_dict()
        self.config_path.write_text(json.dumps({"study": data, "base_dir": str(Path(config.base_dir).resolve())}))
        self.workers = [_Worker(i, log_dir / f"worker-{i}.log") for i in range(config.workers)]
        self.files_dir = log_dir / "files"
        self.files_dir.mkdir()

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        if "OMP_NUM_THREADS" not in env:
            # NOTE: K workers each using every core slow each other down; split the cores.
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // len(self.workers)))
        return env

    def start(self, worker: _Worker) -> None:
        command = [sys.executable, "-m", "presso.search.workers", "--config", str(self.config_path),
                   "--parent", str(os.getpid()), "--index", str(worker.index), "--files", str(self.files_dir)]
        with open(worker.log, "ab") as log:
            worker.proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=self._env(),
                start_new_session=True,  # Ctrl-C reaches the parent only; it stops the workers once
            )
        worker.starts += 1

    def start_all(self) -> None:
        for worker in self.workers:
            self.start(worker)

    def check(self, budget_done) -> None:
        """Handle workers that exited: restart the ones that died, raise on a fatal error."""
        for worker in self.workers:
            if worker.proc is None or worker.proc.poll() is None:
                continue
            code = worker.proc.returncode
            worker.exit_codes.append(code)
            worker.proc = None
            if code == 0:
                continue
            if code == EXIT_USAGE:
                self.stop()
                self.usage_error = True
                raise PressoError(f"workers: worker {worker.index} stopped: {_last_error(worker.log, with_path=False)}")
            if budget_done() or self.restarts >= self.max_restarts:
                continue
            self.restarts += 1
            print(f"warning: worker {worker.index} {_describe_exit(code)}; its trial is retried after "
                  f"{self.config.grace_s} s; restarting it", file=sys.stderr)
            self.start(worker)

    def any_alive(self) -> bool:
        return any(w.alive for w in self.workers)

    def failed_codes(self) -> list[int]:
        return [c for w in self.workers for c in w.exit_codes if c != 0]

    def stop(self, wait_s: float = STOP_WAIT_S) -> None:
        """SIGTERM every live worker (each records its running trial as interrupted), then wait;
        SIGKILL what is left (its trial goes stale and is retried on resume)."""
        live = [w for w in self.workers if w.alive]
        for worker in live:
            _signal(worker.proc, signal.SIGTERM)
        deadline = time.monotonic() + wait_s
        for worker in live:
            try:
                worker.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal(worker.proc, signal.SIGKILL)
                worker.proc.wait()


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


def _last_error(log: Path, with_path: bool = True) -> str:
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return f"see {log}"
    errors = [line for line in lines if line.startswith("error:")]
    shown = errors[-1].removeprefix("error:").strip() if errors else (lines[-1] if lines else "no output")
    return f"{shown} (log: {log})" if with_path else shown


def run_study_workers(config: StudyConfig, *, observers: list[StudyObserver] | None = None,
                      progress: bool = True) -> RunSummary:
    """Run (or resume) a study with ``config.workers`` local processes sharing its SQL store.

    Args:
        config: the study settings; ``config.workers`` processes are started.
        observers: followers such as the MLflow tracker; they run in this process only and
            see each trial once it is stored.
        progress: show a progress bar.

    Returns:
        A :class:`~presso.search.RunSummary`; ``ran_here`` counts the trials the workers
        finished during this call.

    Raises:
        PressoError: a worker met a usage error (incompatible study, bad model...), or every
            worker stopped before the budget was reached.

    Example::

        config = load_study_file("examples/smollm2.yaml").with_overrides(workers=2)
        summary = run_study_workers(config)
    """
    import optuna

    from presso.search._progress import StudyProgress
    from presso.search._records import objective_names, pareto_rows, row_from_trial
    from presso.search._storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if config.storage.startswith("sqlite") and config.workers > SQLITE_WORKERS:
        print(f"note: {config.workers} workers queue for one SQLite file's write lock (tested up to "
              f"{SQLITE_WORKERS}); for more, or workers on several machines, use PostgreSQL "
              "(--storage postgresql+psycopg://user@host/db)", file=sys.stderr)
    # NOTE: open the store (creating its tables) here, before K workers race to create them.
    storage = open_storage(config.storage, heartbeat_s=config.heartbeat_s, grace_s=config.grace_s)
    seen = _finished_numbers(config.name, storage)
    log_dir = Path(tempfile.mkdtemp(prefix=f"presso-workers-{os.getpid()}-"))
    pool = _WorkerPool(config, log_dir, max_restarts=2 * config.workers)
    notify = _Notifier(list(observers or []))
    study, bar, status, interrupted, ran_here = None, None, "FINISHED", False, 0
    try:
        pool.start_all()
        study = _wait_for_study(config.name, storage, pool)
        notify("on_run_start", study, config)
        bar = StudyProgress(config.trials, enabled=progress, objective_names=objective_names(study))
        counted, run_files_sent = 0, False
        with bar:
            while True:
                pool.check(lambda: counted >= config.trials)  # restart a worker that died
                alive = pool.any_alive()
                run_files_sent = _deliver_files(pool.files_dir, study, notify, run_files_sent)
                optuna.storages.fail_stale_trials(study)
                trials = study.get_trials(deepcopy=False)
                rows = [row_from_trial(t) for t in trials]
                counted = sum(r.counted for r in rows)
                for trial, row in zip(trials, rows):
                    if trial.number in seen or not trial.state.is_finished():
                        continue
                    seen.add(trial.number)
                    if not (row.counted or row.state == "FAIL"):
                        continue  # a cancelled surplus trial
                    if row.counted:
                        ran_here += 1
                        bar.trial_done(row)
                    notify("on_trial_end", study, trial)
                bar.update(rows, len(pareto_rows(study, rows)))
                if not alive:
                    break
                time.sleep(POLL_S)
        if sum(row_from_trial(t).counted for t in study.get_trials(deepcopy=False)) < config.trials:
            codes = ", ".join(_describe_exit(c) for c in pool.failed_codes()) or "no error"
            raise PressoError(
                f"workers: every worker stopped before the budget was reached ({codes}); the study is "
                f"kept: run the same command to resume (worker logs: {log_dir})"
            )
    except KeyboardInterrupt:
        interrupted, status = True, "KILLED"
        pool.stop()
    except BaseException:
        status = "FAILED"
        pool.stop(wait_s=10.0)
        raise
    finally:
        if study is not None:
            notify("on_run_end", study, status)
        if status != "FAILED" or pool.usage_error:
            shutil.rmtree(log_dir, ignore_errors=True)  # kept after other errors: the message names it
    return _summary(config, study, ran_here, interrupted)


def _finished_numbers(name: str, storage) -> set[int]:
    import optuna

    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return set()
    return {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}


def _wait_for_study(name: str, storage, pool: _WorkerPool):
    """The study, once a worker has created it (and set its Presso attribute)."""
    import optuna

    from presso.search._records import study_info

    while True:
        try:
            study = optuna.load_study(study_name=name, storage=storage)
            if study_info(study):
                return study
        except KeyError:
            pass
        pool.check(lambda: False)
        if not pool.any_alive():
            raise PressoError(f"workers: every worker stopped before the study was created: "
                              f"{_last_error(pool.workers[0].log)}")
        time.sleep(POLL_S)


def _summary(config: StudyConfig, study, ran_here: int, interrupted: bool) -> RunSummary:
    from presso.search._driver import summarize

    return summarize(config.name, study, ran_here, interrupted)


# --------------------------------------------------------------------------------------------
# The worker process: ``python -m presso.search.workers --config FILE --parent PID``.


def _stop_once(signum, frame):
    """The first SIGTERM/SIGINT interrupts the trial (it is recorded and queued again); later
    ones are ignored so that recording is not cut short."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def _watch_parent(parent_pid: int) -> None:
    def watch():
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)  # the parent died: stop as if it had stopped us

    threading.Thread(target=watch, name="presso-parent-watch", daemon=True).start()


def _worker_main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m presso.search.workers")
    parser.add_argument("--config", required=True, help="the study as JSON (written by the parent)")
    parser.add_argument("--parent", type=int, required=True, help="the parent's pid (stop when it dies)")
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--files", help="where to leave on_files output for the parent")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_once)
    signal.signal(signal.SIGINT, _stop_once)
    _watch_parent(args.parent)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    try:
        from presso.search._driver import run_study

        data = json.loads(Path(args.config).read_text())
        config = study_from_dict(data["study"], base_dir=data["base_dir"])
        summary = run_study(config, progress=False, observers=[_FileDrop(Path(args.files))] if args.files else None)
    except PressoError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return EXIT_INTERRUPTED if summary.interrupted else 0


if __name__ == "__main__":
    sys.exit(_worker_main())
