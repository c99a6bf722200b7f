"""The study loop: ask a plan, compress and score it, tell the store, until the budget.

Budget rule: a trial counts when it completed, failed for a reason of its own (bad plan,
NaN, out of memory), or was stopped after its low-fidelity look (multi-fidelity: PRUNED with
``low_values``). Trials lost to an interruption or a dead worker do not count and are
retried, so a study always ends with exactly ``trials`` counted trials, however often it was
killed and resumed. Several drivers may share one store; a driver that finds its freshly
asked trial beyond the budget marks it PRUNED with ``cancelled`` instead of running it.

This is the only ask/tell loop: executors (:mod:`presso.search._executor`) run the plans.
"""

from __future__ import annotations

import hashlib
import json
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

from presso import __version__
from presso.errors import PressoError
from presso.search._config import StudyConfig
from presso.search._observer import StudyObserver
from presso.search._records import MODULES_KEY, SIZE_KEY, STUDY_ATTR, modules_info, row_from_trial, study_info
from presso.search._samplers import make_sampler
from presso.search._jobs import failure_reason
from presso.search._storage import load_existing_study, open_storage
from presso.search.optuna_space import suggest

MAX_LOST_RETRIES = 3  # a plan whose worker died this many times fails (counted), e.g. host OOM


@dataclass
class RunSummary:
    study_name: str
    counted: int
    complete: int
    failed: int
    ran_here: int
    pareto_size: int
    interrupted: bool = False


def space_fingerprint(space_dict: dict) -> str:
    return hashlib.sha256(json.dumps(space_dict, sort_keys=True).encode()).hexdigest()[:16]


def open_study(config: StudyConfig, storage, evaluator):
    """Create the study, or resume it after checking it was made with the same setup."""
    import optuna

    info = {
        "version": __version__,
        "model": config.model,
        "objectives": [dict(name=s.name, direction=s.direction, unit=s.unit) for s in evaluator.objective_specs],
        "constraints": list(config.constraints),
        "space": evaluator.space_dict,
        "space_fingerprint": space_fingerprint(evaluator.space_dict),
        # ``labels`` came after studies were first stored: left unset it is not part of the record.
        "eval": {k: v for k, v in config.to_dict()["eval"].items() if not (k == "labels" and v is None)},
        "sampler": config.sampler,
        "trials": config.trials,
        "seed": config.seed,
        # With space and model, rebuilds every trial's plan from its parameters (_records.plan_source).
        MODULES_KEY: modules_info(evaluator.module_names, evaluator.embedding_names),
    }
    if getattr(evaluator, "size_terms", None):  # what size_bytes / dense_bytes count (status, pareto, MLflow say it)
        info[SIZE_KEY] = dict(evaluator.size_terms)
    sampler = make_sampler(config.sampler, config.seed, len(evaluator.objective_specs))
    try:
        study = optuna.load_study(study_name=config.name, storage=storage, sampler=sampler)
        created = False
    except KeyError:
        try:
            study = optuna.create_study(
                study_name=config.name, storage=storage, sampler=sampler,
                directions=[s.direction for s in evaluator.objective_specs],
            )
            study.set_user_attr(STUDY_ATTR, info)
            created = True
        except optuna.exceptions.DuplicatedStudyError:  # another worker created it first
            study = optuna.load_study(study_name=config.name, storage=storage, sampler=sampler)
            created = False
    if not created:
        stored = _wait_for_info(study)
        _check_compatible(config.name, stored, info)
        if MODULES_KEY not in stored:  # a study from before plans left the trials: its new trials need it
            study.set_user_attr(STUDY_ATTR, stored | {MODULES_KEY: info[MODULES_KEY]})
    return study, created


def _wait_for_info(study, timeout_s: float = 60.0) -> dict:
    """The study's Presso attribute; another worker that has just created the study sets it a
    moment after ``create_study``, so an empty one is waited for before it is judged."""
    deadline = time.monotonic() + timeout_s
    stored = study_info(study)
    while not stored and time.monotonic() < deadline:
        time.sleep(0.2)
        stored = study_info(study)
    return stored


def _check_compatible(name: str, stored: dict, wanted: dict) -> None:
    for key, label in (("model", "model"), ("space_fingerprint", "search space"), ("objectives", "objectives"),
                       ("constraints", "constraints"), ("eval", "evaluation text settings")):
        if stored.get(key) != wanted.get(key):
            shown = stored.get(key) if key != "space_fingerprint" else "a different space"
            raise PressoError(
                f"study: {name!r} already exists with another {label} ({shown!r}); Optuna cannot mix them in one "
                "study: resume it unchanged, or pass a new --study name"
            )


def check_warm_start_source(config: StudyConfig, storage) -> None:
    """Before a study is created, check that the study it should start from exists (a typo
    would otherwise leave a new study that can never be warm-started)."""
    import optuna

    source = config.warm_start.from_study
    if not source or config.name in optuna.study.get_all_study_names(storage):
        return
    if source == config.name:
        raise PressoError(f"study.warm_start.from_study: got {source!r}, the study itself; name an earlier study")
    if config.warm_start.from_storage:
        load_existing_study(source, config.warm_start.from_storage)
    else:
        load_existing_study(source, config.storage)


class _Budget:
    """Budget counts of a study from a :class:`~presso.search._index.StudyIndex`: each check
    reads only the trials still open at the last one (and those created since), so it costs
    the same at trial 10,000 as at trial 100."""

    def __init__(self, study, trials: int):
        from presso.search._index import shared_index

        self.study, self.trials = study, trials
        self.index = shared_index(study)  # the ``evo`` sampler reads the same one

    def snapshot(self):
        """``(index, counted, running, waiting)``, read now."""
        index = self.index.refresh()
        return index, index.counted, index.running, index.waiting

    def surplus(self, number: int) -> bool:
        """Whether trials numbered below ``number`` already fill the budget."""
        return self.index.ahead_of(number) >= self.trials


def run_study(config: StudyConfig, *, observers: list[StudyObserver] | None = None, progress: bool = True,
              evaluator=None, max_trials_here: int | None = None, executor=None) -> RunSummary:
    """Run (or resume) the study described by ``config`` until its budget is reached.

    The one study loop, whatever runs the trials: it asks the sampler, keeps the budget exact,
    beats the heartbeats of the trials in flight, retries trials whose worker died, decides
    multi-fidelity promotions, tells the store and calls the observers. The executor (this
    process, local worker processes or Ray actors; see :mod:`presso.search._executor`) only
    evaluates plans.

    Args:
        config: the study settings (``backend`` and ``workers`` pick the executor).
        observers: followers such as the MLflow tracker; they run in this process.
        progress: show a progress bar.
        evaluator: a ready :class:`~presso.search.Evaluator` for the ``local`` executor.
        max_trials_here: stop after this many trials in this call (tests, benchmarks).
        executor: an :class:`~presso.search._executor.Executor` to use instead.

    Returns:
        A :class:`RunSummary`.

    Raises:
        PressoError: the study cannot be opened, or the workers cannot start.

    Example::

        summary = run_study(load_study_file("examples/tiny.yaml"))
    """
    import optuna

    from presso.search._executor import make_executor

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(config.storage, heartbeat_s=config.heartbeat_s, grace_s=config.grace_s)
    check_warm_start_source(config, storage)
    if executor is None:
        executor = make_executor(config, evaluator=evaluator) if evaluator is not None else make_executor(config)
    notify = _Notifier(list(observers or []))
    loop = _Loop(config, storage, executor, notify, max_trials_here)
    status = "FINISHED"
    try:
        view = executor.start()
        loop.study, created = open_study(config, storage, view)
        if created:
            _warm_start(loop.study, config, view, executor)
        notify("on_run_start", loop.study, config)
        dense_files = getattr(view, "dense_files", dict)()
        if dense_files:
            notify("on_files", loop.study, None, dense_files)
        loop.run(view, progress)
    except KeyboardInterrupt:
        loop.interrupted, status = True, "KILLED"
        loop.retry_in_flight()
    except BaseException:
        status = "FAILED"
        raise
    finally:
        try:
            if loop.study is not None:
                notify("on_run_end", loop.study, status)
        finally:
            executor.close()
    return summarize(config.name, loop.study, loop.ran_here, loop.interrupted)


@dataclass
class _InFlight:
    trial: object
    started: float
    promoter: object = None


class _Loop:
    """The state of one :func:`run_study` call: the trials in flight and what ran here."""

    def __init__(self, config: StudyConfig, storage, executor, notify, max_trials_here: int | None):
        self.config, self.storage, self.executor, self.notify = config, storage, executor, notify
        self.max_trials_here = max_trials_here
        self.study = None
        self.inflight: dict[int, _InFlight] = {}
        self.ran_here, self.interrupted = 0, False

    def _room(self, counted: int, running: int, waiting: int) -> bool:
        """Whether to ask another trial now: a worker is free, the budget is not filled by trials
        finished or running (queued retries excepted), and this call may run one more."""
        here = self.max_trials_here is None or self.ran_here + len(self.inflight) < self.max_trials_here
        budget = counted < self.config.trials and (counted + running < self.config.trials or waiting > 0)
        return here and budget and self.executor.free() > 0

    def run(self, view, progress: bool) -> None:
        import optuna

        from presso.search._progress import StudyProgress
        from presso.search._storage import Heartbeats

        config, study = self.config, self.study
        budget = _Budget(study, config.trials)
        bar = StudyProgress(config.trials, enabled=progress, objective_names=[s.name for s in view.objective_specs])
        self.bar = bar
        with bar, Heartbeats(self.storage, config.heartbeat_s) as self.beats:
            while True:
                optuna.storages.fail_stale_trials(study)
                index, counted, running, waiting = budget.snapshot()
                bar.update_index(index)
                done_here = self.max_trials_here is not None and self.ran_here >= self.max_trials_here
                if (counted >= config.trials or done_here) and not self.inflight:
                    return
                while self._room(counted, running, waiting):
                    trial = ask_with_heartbeat(study, self.storage)
                    if budget.surplus(trial.number):
                        trial.set_user_attr("cancelled", "budget already filled by other trials")
                        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                    else:
                        self._submit(trial, view)
                    _, counted, running, waiting = budget.snapshot()
                if not self.inflight:
                    time.sleep(min(config.heartbeat_s, 2))  # others' trials may still fail and need a retry
                    continue
                for handle, result in self.executor.wait(1.0):
                    item = self.inflight.pop(handle)
                    self.beats.discard(item.trial._trial_id)
                    self._record(*tell_result(study, item, result, view))

    def _submit(self, trial, view) -> None:
        from presso.search._jobs import TrialJob

        started = time.perf_counter()
        try:
            # The plan itself is not stored: the params and the study attribute rebuild it.
            plan = suggest(trial, view.bound, model=self.config.model)
        except Exception as exc:  # noqa: BLE001 - a plan that cannot be built fails alone
            self._record(tell_failure(self.study, trial, failure_reason(exc), started), {})
            return
        promoter = _promoter(self.study, trial, view, self.config)
        handle = self.executor.submit(TrialJob(plan, trial.number, low_first=promoter is not None), promote=promoter)
        where = self.executor.where(handle)
        if where:
            trial.set_user_attr("worker", where)
        self.beats.add(trial._trial_id)
        self.inflight[handle] = _InFlight(trial, started, promoter)

    def _record(self, frozen, files: dict) -> None:
        row = row_from_trial(frozen)
        if row.counted:
            self.ran_here += 1
            self.bar.trial_done(row)
        if files:
            self.notify("on_files", self.study, frozen.number, files)
        self.notify("on_trial_end", self.study, frozen)

    def retry_in_flight(self) -> None:
        """After an interrupt: the trials in flight are queued again (a worker's own store
        write is not waited for; a trial missed here goes stale and is retried instead)."""
        for item in self.inflight.values():
            try:
                tell_retry(self.study, item.trial, "interrupted",
                           "the run was stopped during this trial; it is retried on resume")
            except Exception:  # noqa: BLE001 - it goes stale and is retried after grace_s instead
                pass
        self.inflight.clear()


def tell_result(study, item: _InFlight, result, view):
    """Tell one finished job; returns ``(stored trial, Outcome.files)``."""
    from presso.search._jobs import Failed, Lost

    trial = item.trial
    if isinstance(result, Lost):
        # The worker died (host out of memory, node lost, killed): not the plan's own failure
        # unless it keeps happening to the same plan.
        lost = int(trial.user_attrs.get("lost_retries", 0))
        if lost + 1 >= MAX_LOST_RETRIES:
            return tell_failure(study, trial, f"{result.reason} ({lost + 1} times for this plan)", item.started), {}
        tell_retry(study, trial, "lost", result.reason + "; it is retried", {"lost_retries": lost + 1})
        return study._storage.get_trial(trial._trial_id), {}
    if isinstance(result, Failed):
        return tell_failure(study, trial, result.reason, item.started), {}
    if getattr(result, "fidelity", "full") == "low":
        return tell_low_fidelity(study, trial, result, getattr(item.promoter, "decision", {}), item.started), {}
    if getattr(result, "low_values", None) is not None:
        trial.set_user_attr("low_values", result.low_values)
    frozen = tell_outcome(study, trial, result, view.objective_specs, view.constraints, item.started)
    return frozen, getattr(result, "files", {})


def _warm_start(study, config: StudyConfig, view, executor) -> None:
    """Seed a new study (see :mod:`presso.search._warmstart`): an earlier study's front, then
    sensitivity-guided plans, then a few spread-out uniform plans, as ``config.warm_start``
    says (the ``uniform`` sampler walks every uniform plan). The driver maps the earlier front
    from its view (it reads the storage); the sensitivity probes and the uniform plans (equal
    sizes are told apart by their weight errors) need the model, so they run as a job on the
    executor. What was enqueued is kept in the study's ``warm_start`` user attribute; notes
    (plans mapped or skipped) are printed."""
    from dataclasses import replace

    from presso.search._jobs import SeedJob, run_job
    from presso.search._warmstart import WarmStartReport

    warm = config.warm_start
    parts = [run_job(view, SeedJob(warm if config.sampler == "uniform" else replace(warm, sensitivity=False,
                                                                                    uniform=False), config.storage))]
    if config.sampler != "uniform" and (warm.sensitivity or warm.uniform):
        parts.append(executor.run(SeedJob(replace(warm, from_study=None))))
    report, seen = WarmStartReport(), set()
    for part in parts:
        for params, attrs in part.entries:
            signature = tuple(sorted(params.items()))
            if signature in seen:
                continue
            seen.add(signature)
            study.enqueue_trial(params, user_attrs=attrs)
            report.counts[attrs["seeded"]] = report.counts.get(attrs["seeded"], 0) + 1
        report.notes += part.report.notes
        report.sensitivity.update(part.report.sensitivity)
        report.seconds.update(part.report.seconds)
    study.set_user_attr("warm_start", report.to_dict())
    for note in report.notes:
        print(note)


def summarize(name: str, study, ran_here: int, interrupted: bool) -> RunSummary:
    """The :class:`RunSummary` of ``study`` as stored now (``study`` None: nothing was created)."""
    if study is None:
        return RunSummary(name, 0, 0, 0, ran_here, 0, interrupted=interrupted)
    from presso.search._index import StudyIndex

    index = StudyIndex(study).refresh()
    return RunSummary(
        study_name=name, counted=index.counted, complete=index.finished["COMPLETE"], failed=index.counted_failed,
        ran_here=ran_here, pareto_size=len(index.front), interrupted=interrupted,
    )


def ask_with_heartbeat(study, storage):
    """``study.ask()`` and a first heartbeat for the new trial, with Ctrl-C/SIGTERM held back
    in between (they take effect right after).

    NOTE: Optuna never finds a RUNNING trial stale until it has a heartbeat; a process stopped
    between the two would leave a trial that no one fails or retries, and a study that needs
    it to fill its budget would wait for it forever.
    """
    with _interrupts_deferred():
        trial = ask(study)
        storage.record_heartbeat(trial._trial_id)
    return trial


def ask(study):
    """``study.ask()``, without its read of the whole study.

    NOTE: ``Study.ask`` looks for a queued trial through Optuna's trial cache, whose first
    sync in a process reads every trial whole (params, every attribute): for a resumed study of
    10,000 SmolLM2 trials, 25 s on SQLite and 87 s on PostgreSQL (2 busy cores). Here the queued
    trials are found with one query on ``trials``, claimed as ``Study.ask`` claims them, and
    the claimed one is put into the cache (which ``Trial.suggest_*`` needs). Samplers that
    read every trial (TPE, NSGA-II) still sync the cache themselves; ``evo`` does not.
    """
    import optuna
    from optuna.storages._cached_storage import _CachedStorage, _StudyInfo

    from presso.search._index import shared_index, waiting_trial_ids

    storage = study._storage
    queued = waiting_trial_ids(study, from_id=shared_index(study).floor_id)
    if queued is None or not isinstance(storage, _CachedStorage):
        return study.ask()
    study._thread_local.cached_all_trials = None  # as in Study.ask: samplers see this trial's study
    for trial_id in queued:
        try:  # False, or an error, when another worker claimed or finished it first
            if not storage.set_trial_state_values(trial_id, state=optuna.trial.TrialState.RUNNING):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        frozen = storage._backend.get_trial(trial_id)
        with storage._lock:
            info = storage._studies.setdefault(study._study_id, _StudyInfo())
            storage._add_trials_to_cache(study._study_id, [frozen])
            info.unfinished_trial_ids.add(trial_id)  # a later sync re-reads it until it finishes
        return optuna.Trial(study, trial_id)
    return optuna.Trial(study, storage.create_new_trial(study._study_id))


@contextmanager
def _interrupts_deferred():
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: pending.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if pending:
            signal.raise_signal(pending[0])  # now handled as it would have been


def _promoter(study, trial, evaluator, config: StudyConfig):
    """The multi-fidelity rule for this trial, or None when multi-fidelity is off. Seeded
    (warm-start) plans are always promoted; they still get a low-fidelity look, so they anchor
    the comparison."""
    if not config.fidelity.enabled:
        return None
    from presso.search._fidelity import Promoter, always

    if "seeded" in trial.user_attrs:
        return always
    return Promoter(study, config.fidelity, evaluator.objective_specs)


def tell_low_fidelity(study, trial, outcome, decision: dict, started: float):
    """Store a plan stopped after its low-fidelity look: PRUNED, with its low-fidelity values in
    ``low_values`` (never in ``values``: it is not a full measurement). It counts towards the
    budget (it was looked at) but never enters the front."""
    import optuna

    trial.set_user_attr("low_values", outcome.low_values)
    trial.set_user_attr("promotion", decision)
    trial.set_user_attr("metrics", outcome.metrics)
    _set_kernels(trial, outcome)
    timings = dict(outcome.timings)
    timings["total_s"] = time.perf_counter() - started
    trial.set_user_attr("timings", timings)
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    return study._storage.get_trial(trial._trial_id)


def tell_failure(study, trial, reason: str, started: float):
    """Fail ``trial`` for a reason of its own (it counts towards the budget)."""
    import optuna

    trial.set_user_attr("failure", reason)
    trial.set_user_attr("timings", {"total_s": time.perf_counter() - started})
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    return study._storage.get_trial(trial._trial_id)


def tell_retry(study, trial, key: str, message: str, extra_attrs: dict | None = None) -> None:
    """Fail ``trial`` without counting it (``key`` says why) and queue the same parameters again."""
    import optuna

    trial.set_user_attr(key, message)
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number, **(extra_attrs or {})})


def _set_kernels(trial, outcome) -> None:
    """The runtime kernels the trial's layers run with, as counts (a few dozen bytes)."""
    kernels = getattr(outcome, "kernels", None)
    if kernels:
        trial.set_user_attr("kernels", kernels)


def tell_outcome(study, trial, outcome, objective_specs, constraints, started: float):
    """Store a measured trial in the ``_records`` format and complete it."""
    store_started = time.perf_counter()
    trial.set_user_attr("values", outcome.values)
    trial.set_user_attr("metrics", outcome.metrics)
    _set_kernels(trial, outcome)
    for constraint in constraints:
        trial.set_constraint(str(constraint), constraint.violation(outcome.values | outcome.metrics))
    timings = dict(outcome.timings)
    timings["total_s"] = time.perf_counter() - started
    trial.set_user_attr("timings", timings)
    study.tell(trial, [outcome.values[s.name] for s in objective_specs])
    frozen = study._storage.get_trial(trial._trial_id)
    timings["store_s"] = time.perf_counter() - store_started
    return frozen


class _Notifier:
    """Calls observer hooks; an observer that raises is reported once and then skipped."""

    def __init__(self, observers):
        self.observers = observers
        self.broken: set[int] = set()

    def __call__(self, hook: str, *args):
        for index, observer in enumerate(self.observers):
            if index in self.broken or not hasattr(observer, hook):  # hooks are optional
                continue
            try:
                getattr(observer, hook)(*args)
            except Exception as exc:  # noqa: BLE001 - tracking must never stop the study
                self.broken.add(index)
                print(f"warning: {type(observer).__name__} stopped after an error in {hook}: {exc}; "
                      "the study goes on (the SQL store keeps every trial)")
