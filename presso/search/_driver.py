"""The study loop: ask a plan, compress and score it, tell the store, until the budget.

Budget rule: a trial counts when it completed, or failed for a reason of its own (bad plan,
NaN, out of memory). Trials lost to an interruption or a dead worker do not count and are
retried, so a study always ends with exactly ``trials`` counted trials, however often it was
killed and resumed. Several workers may share one store; a worker that finds its freshly
asked trial beyond the budget marks it PRUNED with ``cancelled`` instead of running it.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass

from presso import __version__
from presso.errors import PressoError
from presso.plan import plan_to_dict
from presso.search._config import StudyConfig
from presso.search._observer import StudyObserver
from presso.search._records import STUDY_ATTR, pareto_rows, row_from_trial, study_info, trial_rows
from presso.search._samplers import make_sampler
from presso.search._storage import heartbeat, open_storage, redact
from presso.search.optuna_space import suggest


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


def load_existing_study(name: str, storage_url: str):
    """Open a study that must exist (for status, pareto, export...)."""
    import optuna

    storage = open_storage(storage_url)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        known = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        shown = ", ".join(repr(k) for k in known[:10]) or "none"
        raise PressoError(f"study: no study named {name!r} in {redact(storage_url)!r}; studies there: {shown}") from None


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
        "eval": {k: v for k, v in config.to_dict()["eval"].items()},
        "sampler": config.sampler,
        "trials": config.trials,
        "seed": config.seed,
    }
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
        _check_compatible(config.name, study_info(study), info)
    return study, created


def _check_compatible(name: str, stored: dict, wanted: dict) -> None:
    for key, label in (("model", "model"), ("space_fingerprint", "search space"), ("objectives", "objectives"),
                       ("constraints", "constraints"), ("eval", "evaluation text settings")):
        if stored.get(key) != wanted.get(key):
            shown = stored.get(key) if key != "space_fingerprint" else "a different space"
            raise PressoError(
                f"study: {name!r} already exists with another {label} ({shown!r}); Optuna cannot mix them in one "
                "study: resume it unchanged, or pass a new --study name"
            )


def _enqueue_warm_start(study, config: StudyConfig, evaluator) -> int:
    """Seed a new study: ``uniform`` walks every uniform plan; other samplers get a few
    spread-out uniform plans first, so the front starts from the recipes users would try."""
    bound = evaluator.bound
    combos = bound.uniform_choices()
    if config.sampler == "uniform":
        chosen = combos[: config.trials]
    elif config.warm_start:
        count = min(len(combos), max(1, config.trials // 5))
        step = len(combos) / count
        chosen = [combos[int(i * step)] for i in range(count)]
    else:
        chosen = []
    for combo in chosen:
        study.enqueue_trial(bound.params_for(combo), user_attrs={"seeded": "uniform"})
    return len(chosen)


class _Budget:
    def __init__(self, study, trials: int):
        self.study, self.trials = study, trials

    def snapshot(self):
        rows = trial_rows(self.study)
        counted = sum(r.counted for r in rows)
        running = sum(r.state == "RUNNING" for r in rows)
        waiting = sum(r.state == "WAITING" for r in rows)
        return rows, counted, running, waiting

    def surplus(self, number: int) -> bool:
        """Whether trials numbered below ``number`` already fill the budget."""
        ahead = 0
        for row in trial_rows(self.study):
            if row.number < number and (row.counted or row.state in ("RUNNING", "WAITING")):
                ahead += 1
        return ahead >= self.trials


def run_study(config: StudyConfig, *, observers: list[StudyObserver] | None = None, progress: bool = True,
              evaluator=None, max_trials_here: int | None = None) -> RunSummary:
    """Run (or resume) the study described by ``config`` until its budget is reached.

    Args:
        config: the study settings.
        observers: followers such as the MLflow tracker.
        progress: show a progress bar.
        evaluator: a ready :class:`~presso.search.Evaluator` (built from ``config`` when None).
        max_trials_here: stop after this many trials in this process (tests, benchmarks).

    Returns:
        A :class:`RunSummary`.
    """
    import optuna

    from presso.search._evaluator import Evaluator
    from presso.search._progress import StudyProgress

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(config.storage, heartbeat_s=config.heartbeat_s, grace_s=config.grace_s)
    evaluator = evaluator or Evaluator(config)
    study, created = open_study(config, storage, evaluator)
    if created:
        _enqueue_warm_start(study, config, evaluator)
    observers = list(observers or [])
    notify = _Notifier(observers)
    notify("on_run_start", study, config)
    budget = _Budget(study, config.trials)
    ran_here, interrupted, status = 0, False, "FINISHED"
    bar = StudyProgress(config.trials, enabled=progress, objective_names=[s.name for s in evaluator.objective_specs])
    try:
        with bar:
            while max_trials_here is None or ran_here < max_trials_here:
                optuna.storages.fail_stale_trials(study)
                rows, counted, running, waiting = budget.snapshot()
                bar.update(rows, len(pareto_rows(study, rows)))
                if counted >= config.trials:
                    break
                if counted + running >= config.trials and waiting == 0:
                    time.sleep(min(config.heartbeat_s, 2))  # others' trials may still fail and need a retry
                    continue
                trial = study.ask()
                if budget.surplus(trial.number):
                    trial.set_user_attr("cancelled", "budget already filled by other trials")
                    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                    continue
                frozen = _run_trial(study, storage, trial, evaluator, config)
                ran_here += 1
                bar.trial_done(row_from_trial(frozen))
                notify("on_trial_end", study, frozen)
    except KeyboardInterrupt:
        interrupted, status = True, "KILLED"
    except BaseException:
        status = "FAILED"
        raise
    finally:
        notify("on_run_end", study, status)
    rows, counted, _, _ = budget.snapshot()
    return RunSummary(
        study_name=config.name, counted=counted,
        complete=sum(r.state == "COMPLETE" for r in rows), failed=sum(r.state == "FAIL" and r.counted for r in rows),
        ran_here=ran_here, pareto_size=len(pareto_rows(study, rows)), interrupted=interrupted,
    )


def _run_trial(study, storage, trial, evaluator, config: StudyConfig):
    """Run one trial and tell the store; an error fails this trial alone, an interrupt marks it
    for a retry and propagates."""
    import optuna

    started = time.perf_counter()
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    try:
        with heartbeat(storage, trial._trial_id, config.heartbeat_s):
            plan = suggest(trial, evaluator.bound, model=config.model)
            trial.set_user_attr("plan", plan_to_dict(plan))
            outcome = evaluator.evaluate(plan)
    except KeyboardInterrupt:
        trial.set_user_attr("interrupted", "the run was stopped during this trial; it is retried on resume")
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        raise
    except Exception as exc:  # noqa: BLE001 - any error fails this trial alone; the study goes on
        reason = str(exc) if isinstance(exc, PressoError) else f"{type(exc).__name__}: {exc}"
        trial.set_user_attr("failure", " ".join(reason.split())[:500] or type(exc).__name__)
        trial.set_user_attr("timings", {"total_s": time.perf_counter() - started})
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return study._storage.get_trial(trial._trial_id)
    store_started = time.perf_counter()
    trial.set_user_attr("values", outcome.values)
    trial.set_user_attr("metrics", outcome.metrics)
    for constraint in evaluator.constraints:
        trial.set_constraint(constraint.text, constraint.violation(outcome.values | outcome.metrics))
    timings = dict(outcome.timings)
    timings["total_s"] = time.perf_counter() - started
    trial.set_user_attr("timings", timings)
    study.tell(trial, [outcome.values[s.name] for s in evaluator.objective_specs])
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
            if index in self.broken:
                continue
            try:
                getattr(observer, hook)(*args)
            except Exception as exc:  # noqa: BLE001 - tracking must never stop the study
                self.broken.add(index)
                print(f"warning: {type(observer).__name__} stopped after an error in {hook}: {exc}; "
                      "the study goes on (the SQL store keeps every trial)")
