"""Run a study's trials on a Ray cluster (``presso run --backend ray``).

Design: Ray **actors** are the executor and the driver keeps Optuna's ask/tell loop.
Each actor (:class:`TrialWorker`) builds one :class:`~presso.search.Evaluator` when it starts
(model, text, dense references) and then scores plan after plan; the driver asks the
sampler for plans, sends them to idle actors, and tells the results to the study's SQL store
in the same format as the local backend (``presso.search._records``), so ``status``,
``pareto``, ``export`` and resuming work whatever ran the study.

Why not Ray Tune's ``OptunaSearch`` (checked against Ray 2.60): it calls ``study.ask`` in
``suggest`` and ``study.tell(trial, values)`` in ``on_trial_complete`` and nothing else: no
heartbeats (a killed driver leaves RUNNING trials that Optuna never fails, so a resumed
study would wait on them forever), no user attributes or constraints (the plan, metrics,
timings and failure reason would be lost, or reached through its private ``_ot_trials``), a
budget in Tune samples rather than Presso's counted trials (failures of a plan's own count,
lost trials are retried), and resuming means ``Tuner.restore`` from Tune's own experiment
folder rather than running the same command. Tune would also start one trainable per trial
unless actors are reused. The actor pool keeps the driver's budget, retry and interrupt rules
unchanged and costs one Ray call per trial.

Resources: each actor reserves ``resources.cpus`` CPUs and ``resources.gpus`` GPUs
(fractions share a GPU); ``max_concurrent`` actors run at once. ``ray_address`` joins an
existing cluster (``auto`` on a cluster node); otherwise a local one is started
(``RAY_AUTH_MODE=disabled`` unless set) and shut down at the end.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace

from presso.errors import PressoError
from presso.search._config import StudyConfig, study_from_dict
from presso.search._driver import (
    RunSummary,
    _Budget,
    _enqueue_warm_start,
    _Notifier,
    ask_with_heartbeat,
    failure_reason,
    open_study,
    tell_failure,
    tell_outcome,
    tell_retry,
)
from presso.search._observer import StudyObserver

MAX_LOST_RETRIES = 3  # a plan whose worker died this many times fails (counted), e.g. host OOM


class TrialWorker:
    """One Ray actor: builds the study's :class:`~presso.search.Evaluator` once, then scores
    plans. Errors of a plan (PressoError, NaN, ``torch.OutOfMemoryError``) are returned as a
    failure, never raised, so the actor survives them.

    Args:
        study: the study as ``StudyConfig.to_dict()`` (space inline, no store URL).
        base_dir: where relative paths of the study resolve.
    """

    def __init__(self, study: dict, base_dir: str):
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from presso.search._evaluator import Evaluator

        self.evaluator = Evaluator(study_from_dict(study, base_dir=base_dir))
        self.where = f"{socket.gethostname()}:{os.getpid()}"

    def describe(self) -> dict:
        ev = self.evaluator
        return {"where": self.where, "module_names": ev.module_names, "embedding_names": ev.embedding_names,
                "objective_specs": ev.objective_specs, "device": ev.device, "setup_s": ev.setup_s,
                "dense_files": ev.dense_files(), "size_terms": ev.size_terms}

    def evaluate(self, plan, number: int) -> dict:
        started = time.perf_counter()
        try:
            outcome = self.evaluator.evaluate(plan, number)
        except Exception as exc:  # noqa: BLE001 - the plan fails alone; the actor lives on
            failure = failure_reason(exc)
        else:
            return {"ok": True, "values": outcome.values, "metrics": outcome.metrics, "timings": outcome.timings,
                    "files": outcome.files, "where": self.where}
        # NOTE: outside the except block, where the traceback (and the failed trial's tensors it
        # holds) is gone, so the cache can really be released before the next plan.
        _release_accelerator_memory()
        return {"ok": False, "failure": failure, "where": self.where, "timings": {"worker_s": time.perf_counter() - started}}


def _release_accelerator_memory() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # after an out-of-memory error, free the cache for the next plan
    except Exception:  # noqa: BLE001 - best effort
        pass


class _DriverView:
    """What the driver needs of an Evaluator, without loading the model: the space bound to
    the module names an actor reported, the objectives and the constraints."""

    def __init__(self, config: StudyConfig, space, description: dict):
        from presso.objectives import parse_constraint
        from presso.search._evaluator import METRIC_NAMES

        self.space_dict = space.to_dict()
        self.module_names, self.embedding_names = description["module_names"], description["embedding_names"]
        self.bound = space.bind(self.module_names, exact_names=self.embedding_names)
        self.objective_specs = list(description["objective_specs"])
        self.dense_files = dict(description.get("dense_files") or {})
        self.size_terms = dict(description.get("size_terms") or {})
        known = [*config.objectives, *METRIC_NAMES]
        self.constraints = [parse_constraint(text, known=known) for text in config.constraints]


@dataclass
class _Slot:
    handle: object
    where: str = ""  # host:pid, once the actor has answered


@dataclass
class _InFlight:
    trial: object
    slot: _Slot
    started: float


class _Heartbeats:
    """One thread that records a heartbeat for every trial in flight (the actors do not talk
    to the store). A killed driver stops beating, so its trials go stale and are retried."""

    def __init__(self, storage, interval_s: float):
        self.storage, self.interval_s = storage, interval_s
        self.ids: set[int] = set()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="presso-ray-heartbeats", daemon=True)

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


def _connect(config: StudyConfig) -> bool:
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


def _init(config: StudyConfig) -> bool:
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


class _ActorPool:
    def __init__(self, config: StudyConfig, study_dict: dict, base_dir: str):
        import ray

        self.options = {"num_cpus": config.resources.cpus, "num_gpus": config.resources.gpus, "max_restarts": 0}
        self.remote_class = ray.remote(TrialWorker)
        self.args = (study_dict, base_dir)
        self.slots = [self._spawn() for _ in range(config.max_concurrent)]

    def _spawn(self) -> _Slot:
        return _Slot(self.remote_class.options(**self.options).remote(*self.args))

    def replace(self, slot: _Slot) -> _Slot:
        import ray

        ray.kill(slot.handle, no_restart=True)
        fresh = self._spawn()
        self.slots[self.slots.index(slot)] = fresh
        return fresh

    def describe(self) -> dict:
        """The first actor's description, once it has built its Evaluator; raises if it cannot."""
        import ray

        try:
            description = ray.get(self.slots[0].handle.describe.remote())
        except ray.exceptions.RayError as exc:
            raise PressoError(f"ray: the trial worker could not start: {_short(exc)}") from None
        self.slots[0].where = description["where"]
        return description

    def close(self) -> None:
        import ray

        for slot in self.slots:
            try:
                ray.kill(slot.handle, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    for marker in ("PressoError: ", "presso.errors.PressoError: "):
        if marker in text:
            text = text.rsplit(marker, 1)[1]
    return text[:limit] or type(exc).__name__


def _actor_study(config: StudyConfig, space_dict: dict) -> tuple[dict, str]:
    """The study as the actors get it: the space inline (no file needed on the workers), a
    local model folder made absolute, and no store or tracking URL (no secrets on the cluster)."""
    model = config.resolve_path(config.model)
    if not model.startswith(("builtin:", "tiny:")) and os.path.exists(model):
        model = os.path.abspath(model)
    data = replace(config, model=model, storage="sqlite:///:memory:", tracking_uri=None).to_dict()
    data["space"] = space_dict
    return data, os.path.abspath(config.base_dir)


def run_study_ray(config: StudyConfig, *, observers: list[StudyObserver] | None = None,
                  progress: bool = True) -> RunSummary:
    """Run (or resume) the study with its trials on Ray actors and its records in ``config.storage``.

    Args:
        config: the study settings; ``resources``, ``max_concurrent`` and ``ray_address`` apply.
        observers: followers such as the MLflow tracker (they run in the driver).
        progress: show a progress bar.

    Returns:
        A :class:`~presso.search.RunSummary`.

    Raises:
        PressoError: the cluster cannot be joined, or a worker cannot build the Evaluator.

    Example::

        config = load_study_file("examples/smollm2.yaml").with_overrides(backend="ray", max_concurrent=4)
        summary = run_study_ray(config)
    """
    import optuna
    import ray

    from presso.search._progress import StudyProgress
    from presso.search._records import row_from_trial
    from presso.search._storage import open_storage
    from presso.search.optuna_space import suggest
    from presso.spaces import load_space

    if getattr(getattr(config, "fidelity", None), "enabled", False):
        raise PressoError(
            "study.fidelity: multi-fidelity needs the study while a trial runs (its promotion rule reads the "
            "other trials), which Ray workers do not have; use --workers K, or set fidelity.enabled: false"
        )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(config.storage, heartbeat_s=config.heartbeat_s, grace_s=config.grace_s)
    space = load_space(config.space if isinstance(config.space, dict) else config.resolve_path(str(config.space)))
    started_ray = _connect(config)
    pool, study, status, interrupted, ran_here = None, None, "FINISHED", False, 0
    notify = _Notifier(list(observers or []))
    inflight: dict[object, _InFlight] = {}
    try:
        _check_cluster_fits(config)
        pool = _ActorPool(config, *_actor_study(config, space.to_dict()))
        view = _DriverView(config, space, pool.describe())
        study, created = open_study(config, storage, view)
        if created:
            _enqueue_warm_start(study, _seeding_config(config), view)
        notify("on_run_start", study, config)
        if view.dense_files:
            notify("on_files", study, None, view.dense_files)
        budget = _Budget(study, config.trials)
        idle = list(pool.slots)
        bar = StudyProgress(config.trials, enabled=progress, objective_names=[s.name for s in view.objective_specs])
        with bar, _Heartbeats(storage, config.heartbeat_s) as beats:
            while True:
                optuna.storages.fail_stale_trials(study)
                index, counted, running, waiting = budget.snapshot()
                bar.update_index(index)
                if counted >= config.trials and not inflight:
                    break
                while idle and counted < config.trials and (counted + running < config.trials or waiting > 0):
                    trial = ask_with_heartbeat(study, storage)
                    if budget.surplus(trial.number):
                        trial.set_user_attr("cancelled", "budget already filled by other trials")
                        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                    else:
                        started = time.perf_counter()
                        slot = idle.pop()
                        try:
                            plan = suggest(trial, view.bound, model=config.model)
                        except Exception as exc:  # noqa: BLE001 - a plan that cannot be built fails alone
                            idle.append(slot)
                            frozen = tell_failure(study, trial, failure_reason(exc), started)
                            ran_here += 1
                            bar.trial_done(row_from_trial(frozen))
                            notify("on_trial_end", study, frozen)
                        else:
                            if slot.where:
                                trial.set_user_attr("worker", slot.where)
                            beats.add(trial._trial_id)
                            inflight[slot.handle.evaluate.remote(plan, trial.number)] = _InFlight(trial, slot, started)
                    _, counted, running, waiting = budget.snapshot()
                if not inflight:
                    time.sleep(min(config.heartbeat_s, 2))  # others' trials may still fail and need a retry
                    continue
                ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
                for ref in ready:
                    item = inflight.pop(ref)
                    beats.discard(item.trial._trial_id)
                    frozen, slot, files = _finish(study, pool, item, ref, view)
                    idle.append(slot)
                    if frozen is not None:
                        row = row_from_trial(frozen)
                        if row.counted:
                            ran_here += 1
                            bar.trial_done(row)
                        if files:
                            notify("on_files", study, frozen.number, files)
                        notify("on_trial_end", study, frozen)
    except KeyboardInterrupt:
        interrupted, status = True, "KILLED"
        for item in inflight.values():
            try:
                tell_retry(study, item.trial, "interrupted", "the run was stopped during this trial; it is retried on resume")
            except Exception:  # noqa: BLE001 - it goes stale and is retried after grace_s instead
                pass
    except BaseException:
        status = "FAILED"
        raise
    finally:
        if study is not None:
            notify("on_run_end", study, status)
        if pool is not None:
            pool.close()
        if started_ray:
            ray.shutdown()
    return _summary(config, study, ran_here, interrupted)


def _finish(study, pool: _ActorPool, item: _InFlight, ref, view: _DriverView):
    """Tell one finished trial; returns ``(frozen trial, slot to reuse, Outcome.files)``."""
    import ray

    from presso.search._evaluator import Outcome

    trial = item.trial
    try:
        result = ray.get(ref)
        trial.set_user_attr("worker", result["where"])  # known once the actor has answered
    except (ray.exceptions.RayActorError, ray.exceptions.OutOfMemoryError, ray.exceptions.NodeDiedError) as exc:
        # The worker process died (host out of memory, node lost, killed): not the plan's own
        # failure unless it keeps happening to the same plan.
        lost = int(trial.user_attrs.get("lost_retries", 0))
        reason = f"the Ray worker died during this trial: {_short(exc, 200)}"
        fresh = pool.replace(item.slot)
        if lost + 1 >= MAX_LOST_RETRIES:
            return tell_failure(study, trial, f"{reason} ({lost + 1} times for this plan)", item.started), fresh, {}
        tell_retry(study, trial, "lost", reason + "; it is retried", {"lost_retries": lost + 1})
        return study._storage.get_trial(trial._trial_id), fresh, {}
    except ray.exceptions.RayError as exc:
        return tell_failure(study, trial, _short(exc, 500), item.started), item.slot, {}
    item.slot.where = result["where"]
    if not result["ok"]:
        frozen = tell_failure(study, trial, result["failure"], item.started)
        return frozen, item.slot, {}
    outcome = Outcome(values=result["values"], metrics=result["metrics"], timings=result["timings"])
    frozen = tell_outcome(study, trial, outcome, view.objective_specs, view.constraints, item.started)
    return frozen, item.slot, dict(result.get("files") or {})


def _seeding_config(config: StudyConfig) -> StudyConfig:
    """Sensitivity-guided warm-start plans probe the model, which only the actors hold: on Ray
    the study is seeded from the other sources (an earlier study, uniform plans)."""
    warm = getattr(config, "warm_start", None)
    if not getattr(warm, "sensitivity", False):
        return config
    print("note: sensitivity-guided warm-start plans need the model in the driver; with --backend ray the "
          "study starts from the other warm-start sources (run a short local study to get them)")
    return replace(config, warm_start=replace(warm, sensitivity=False))


def _check_cluster_fits(config: StudyConfig) -> None:
    import ray

    total = ray.cluster_resources()
    for key, per_trial in (("CPU", config.resources.cpus), ("GPU", config.resources.gpus)):
        if per_trial and total.get(key, 0) < per_trial:
            raise PressoError(
                f"ray: each trial asks for {per_trial:g} {key} (study.resources) but the cluster has "
                f"{total.get(key, 0):g}; lower study.resources.{key.lower()}s or add nodes"
            )
        if per_trial and total.get(key, 0) < per_trial * config.max_concurrent:
            fits = int(total.get(key, 0) // per_trial)
            print(f"warning: the cluster has {total.get(key, 0):g} {key}, so {fits} of the "
                  f"{config.max_concurrent} concurrent trials (max_concurrent) can run at once")


def _summary(config: StudyConfig, study, ran_here: int, interrupted: bool) -> RunSummary:
    from presso.search._driver import summarize

    return summarize(config.name, study, ran_here, interrupted)
