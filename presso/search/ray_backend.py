"""The ``ray`` executor: a study's trials on Ray actors (``presso run --backend ray``).

Ray **actors** run the jobs and the driver keeps the one study loop (:func:`~presso.search.run_study`).
Each actor (:class:`TrialWorker`) builds one :class:`~presso.search.Evaluator` when it starts
(model, text, dense references) and then scores plan after plan; the driver asks the
sampler for plans, sends them to idle actors, and tells the results to the study's SQL store
in the same format as every executor (``presso.search._records``), so ``status``,
``pareto``, ``export`` and resuming work whatever ran the study. Multi-fidelity promotions
are decided in the driver between an actor's two calls; sensitivity warm-start probes run
as a job on an actor.

Why not Ray Tune's ``OptunaSearch`` (checked against Ray 2.60): it calls ``study.ask`` in
``suggest`` and ``study.tell(trial, values)`` in ``on_trial_complete`` and nothing else: no
heartbeats (a killed driver leaves RUNNING trials that Optuna never fails, so a resumed
study would wait on them forever), no user attributes or constraints (the plan, metrics,
timings and failure reason would be lost, or reached through its private ``_ot_trials``), a
budget in Tune samples rather than Presso's counted trials (failures of a plan's own count,
lost trials are retried), and resuming means ``Tuner.restore`` from Tune's own experiment
folder rather than running the same command. Tune would also start one trainable per trial
unless actors are reused. The actor pool keeps the driver's budget, retry and interrupt rules
unchanged and costs one Ray call per trial (two with multi-fidelity).

Resources: each actor reserves ``resources.cpus`` CPUs and ``resources.gpus`` GPUs
(fractions share a GPU); ``max_concurrent`` actors run at once, or as many as the
cluster's resources hold where that is fewer. ``ray_address`` joins an
existing cluster (``auto`` on a cluster node); otherwise a local one is started
(``RAY_AUTH_MODE=disabled`` unless set) and shut down at the end.
"""

from __future__ import annotations

import math
import os
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass

from presso.errors import PressoError
from presso.search._executor import Executor
from presso.search._jobs import Failed, Lost, WorkerView, worker_study


class TrialWorker:
    """One Ray actor: builds the study's :class:`~presso.search.Evaluator` once, then runs jobs
    (:mod:`presso.search._jobs`). Errors of a plan (PressoError, NaN, ``torch.OutOfMemoryError``)
    are returned as a failure, never raised, so the actor survives them.

    Args:
        study: the study as ``StudyConfig.to_dict()`` (space inline, no store URL).
        base_dir: where relative paths of the study resolve.
    """

    def __init__(self, study: dict, base_dir: str):
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from presso.search._config import study_from_dict
        from presso.search._evaluator import Evaluator
        from presso.search._jobs import JobRunner

        self.runner = JobRunner(Evaluator(study_from_dict(study, base_dir=base_dir)))

    def describe(self) -> dict:
        from presso.search._jobs import describe

        return describe(self.runner.evaluator)

    def start(self, job):
        return self.runner.start(job)

    def decide(self, promoted: bool):
        return self.runner.decide(promoted)


@dataclass
class _Slot:
    handle: object
    where: str = ""  # host:pid, once the actor has answered
    job: int | None = None
    promote: object = None


def _connect(config) -> bool:
    """Join ``config.ray_address`` or start a local cluster; True when this call started Ray."""
    import ray

    if ray.is_initialized():
        return False
    with _keep_sigterm_handler():
        return _init(config)


@contextmanager
def _keep_sigterm_handler():
    """NOTE: ``ray.init`` replaces the driver's SIGTERM handler with one that exits at once;
    the CLI's turns SIGTERM into an interrupt, so trials in flight are recorded for a retry.
    A Python handler installed before is put back (the default action is left to Ray)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if callable(previous):
            signal.signal(signal.SIGTERM, previous)


def _init(config) -> bool:
    import logging

    import ray

    if config.ray_address:
        try:
            ray.init(address=config.ray_address, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise PressoError(
                f"ray: cannot join the cluster at {config.ray_address!r}: {' '.join(str(exc).split())[:200]}; "
                "run the driver on a cluster node with --ray-address auto, or check `ray status` there"
            ) from None
        return True
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local cluster needs no token
    need = math.ceil(config.resources.cpus * config.max_concurrent)
    ray.init(num_cpus=max(os.cpu_count() or 1, need), include_dashboard=False, logging_level=logging.WARNING)
    return True


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    for marker in ("PressoError: ", "presso.errors.PressoError: "):
        if marker in text:
            text = text.rsplit(marker, 1)[1]
    return text[:limit] or type(exc).__name__


class RayExecutor(Executor):
    """``max_concurrent`` actors, each reserving ``resources``; one job per actor at a time."""

    name = "ray"

    def __init__(self, config):
        super().__init__(config)
        self.started_ray = False
        self.slots: list[_Slot] = []
        self.calls: dict[object, _Slot] = {}  # the pending Ray call of each busy actor
        self.count = 0

    def start(self) -> WorkerView:
        import ray

        self.started_ray = _connect(self.config)
        pool = _actors_that_fit(self.config)
        study_data, base_dir, space_dict = worker_study(self.config)
        config = self.config
        self.options = {"num_cpus": config.resources.cpus, "num_gpus": config.resources.gpus, "max_restarts": 0}
        self.remote_class = ray.remote(TrialWorker)
        self.args = (study_data, base_dir)
        self.slots = [self._spawn() for _ in range(pool)]
        try:  # every actor builds its Evaluator at once; each trial then records where it ran
            descriptions = ray.get([slot.handle.describe.remote() for slot in self.slots])
        except ray.exceptions.RayError as exc:
            raise PressoError(f"ray: the trial worker could not start: {_short(exc)}") from None
        for slot, description in zip(self.slots, descriptions):
            slot.where = description["where"]
        return WorkerView(config, space_dict, descriptions[0])

    def _spawn(self) -> _Slot:
        return _Slot(self.remote_class.options(**self.options).remote(*self.args))

    def free(self) -> int:
        return sum(slot.job is None for slot in self.slots)

    def submit(self, job, promote=None) -> int:
        slot = next(s for s in self.slots if s.job is None)
        self.count += 1
        slot.job, slot.promote = self.count, promote
        self.calls[slot.handle.start.remote(job)] = slot
        return self.count

    def where(self, handle: int) -> str:
        return next((s.where for s in self.slots if s.job == handle), "")

    def wait(self, timeout_s: float):
        import ray

        if not self.calls:
            return []
        ready, _ = ray.wait(list(self.calls), num_returns=1, timeout=timeout_s)
        results = []
        for ref in ready:
            slot = self.calls.pop(ref)
            try:
                kind, body = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.OutOfMemoryError, ray.exceptions.NodeDiedError) as exc:
                results.append((slot.job, Lost(f"the Ray worker died during this trial: {_short(exc, 200)}")))
                self._replace(slot)
                continue
            except ray.exceptions.RayError as exc:
                kind, body = "done", Failed(_short(exc, 500))
            if kind == "low":  # multi-fidelity: the driver decides, the actor goes on
                self.calls[slot.handle.decide.remote(slot.promote(body))] = slot
                continue
            results.append((slot.job, body))
            slot.job, slot.promote = None, None
        return results

    def _replace(self, slot: _Slot) -> None:
        import ray

        ray.kill(slot.handle, no_restart=True)
        self.slots[self.slots.index(slot)] = self._spawn()

    def close(self) -> None:
        import ray

        for slot in self.slots:
            try:
                ray.kill(slot.handle, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.slots, self.calls = [], {}
        if self.started_ray:
            ray.shutdown()
            self.started_ray = False


def _actors_that_fit(config) -> int:
    """How many actors the pool gets: ``max_concurrent``, or fewer where the cluster's resources
    hold fewer. NOTE: an actor that does not fit waits for resources forever, and ``start``
    waits for every actor's Evaluator, so a pool larger than the cluster would hang the study
    (a 1-CPU head with the default two 1-CPU actors did)."""
    import ray

    total = ray.cluster_resources()
    pool = config.max_concurrent
    for key, per_trial in (("CPU", config.resources.cpus), ("GPU", config.resources.gpus)):
        if not per_trial:
            continue
        fits = math.floor(total.get(key, 0) / per_trial + 1e-9)  # 2 // 0.1 is 19.0
        if fits < 1:
            raise PressoError(
                f"ray: each trial asks for {per_trial:g} {key} (study.resources) but the cluster has "
                f"{total.get(key, 0):g}; lower study.resources.{key.lower()}s or add nodes"
            )
        if fits < pool:
            print(f"warning: the cluster has {total.get(key, 0):g} {key}, so {fits} of the "
                  f"{config.max_concurrent} concurrent trials (max_concurrent) can run at once")
            pool = fits
    return pool


def run_study_ray(config, **kwargs):
    """:func:`~presso.search.run_study` with its trials on Ray actors and its records in
    ``config.storage``; ``resources``, ``max_concurrent`` and ``ray_address`` apply.

    Raises:
        PressoError: the cluster cannot be joined, or a worker cannot build the Evaluator.

    Example::

        config = load_study_file("examples/tiny.yaml").with_overrides(backend="ray", max_concurrent=2)
        summary = run_study_ray(config)
    """
    from presso.search._driver import run_study

    return run_study(config, executor=RayExecutor(config), **kwargs)
