"""What an executor runs, on the worker side: a trial or the model-bound part of a warm start.

A job is plain data (it crosses a process pipe or a Ray call). A worker holds one
:class:`~presso.search.Evaluator` and answers each job with an event:

* ``("done", result)``: an :class:`~presso.search.Outcome`, a :class:`Failed` or a
  :class:`~presso.search._warmstart.WarmStartReport` with :class:`SeedResult`;
* ``("low", low_values)``: a multi-fidelity trial had its short-text look; the driver decides
  (it holds the study the promotion rule reads) and the worker goes on with :meth:`JobRunner.decide`.

The driver never needs the model: it works from a :class:`WorkerView` of what a worker reported.
"""

from __future__ import annotations

import os
import queue
import socket
import threading
from dataclasses import dataclass, field, replace

from presso.errors import PressoError


@dataclass
class TrialJob:
    plan: object
    number: int
    low_first: bool = False  # multi-fidelity: measure on the short text, then ask the driver


@dataclass
class SeedJob:
    """Warm-start plans from the worker's study with ``warm_start`` in place of its own (the
    driver sends only the sources that probe the model; no store URL leaves the driver)."""

    warm_start: object  # a WarmStartConfig
    storage: str | None = None  # where ``warm_start.from_study`` lives (driver-side jobs only)


@dataclass
class Failed:
    """A trial that failed for a reason of its own (it counts towards the budget)."""

    reason: str


@dataclass
class Lost:
    """A trial whose worker died under it: not the plan's fault, so it is retried."""

    reason: str


@dataclass
class SeedResult:
    """The plans a warm start enqueued, in order, and its report."""

    entries: list[tuple[dict, dict]] = field(default_factory=list)
    report: object = None


class PlanRecorder:
    """Stands in for a study in ``enqueue_warm_start``: keeps what it enqueues, in order."""

    def __init__(self):
        self.entries: list[tuple[dict, dict]] = []

    def enqueue_trial(self, params: dict, user_attrs: dict | None = None) -> None:
        self.entries.append((dict(params), dict(user_attrs or {})))


def failure_reason(exc: BaseException) -> str:
    """One line (at most 500 characters) saying why a trial failed."""
    reason = str(exc) if isinstance(exc, PressoError) else f"{type(exc).__name__}: {exc}"
    return " ".join(reason.split())[:500] or type(exc).__name__


def release_memory() -> None:
    """After a failed trial (say, out of memory) give its tensors back before the next one."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_job(evaluator, job, promote=None):
    """Run ``job`` on ``evaluator``; a trial's own error becomes :class:`Failed` (never raised).

    ``promote(low_values) -> bool`` answers a multi-fidelity trial's question.
    """
    if isinstance(job, SeedJob):
        from presso.search._warmstart import enqueue_warm_start

        recorder = PlanRecorder()
        report = enqueue_warm_start(recorder, replace(evaluator.config, warm_start=job.warm_start), evaluator,
                                    job.storage)
        return SeedResult(recorder.entries, report)
    try:
        if job.low_first:
            outcome = evaluator.evaluate(job.plan, job.number, promote=promote)
        else:
            outcome = evaluator.evaluate(job.plan, job.number)
    except Exception as exc:  # noqa: BLE001 - any error fails this trial alone; the study goes on
        failed = Failed(failure_reason(exc))
    else:
        return outcome
    # NOTE: outside the except block, where the traceback (and the failed trial's tensors it
    # holds) is gone, so the memory can really be released before the next plan.
    release_memory()
    return failed


def where() -> str:
    """``host:pid`` of this worker (stored on each trial it runs)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def describe(evaluator) -> dict:
    """What the driver needs of a worker's Evaluator (see :class:`WorkerView`)."""
    return {"where": where(), "module_names": evaluator.module_names, "embedding_names": evaluator.embedding_names,
            "objective_specs": evaluator.objective_specs, "constraints": evaluator.constraints,
            "device": evaluator.device, "setup_s": evaluator.setup_s, "dense_files": evaluator.dense_files(),
            "size_terms": evaluator.size_terms, "weight_shapes": evaluator.weight_shapes}


class JobRunner:
    """A remote worker's side of the protocol: :meth:`start` a job and get its first event;
    after a ``"low"`` event, :meth:`decide` and get the next. A multi-fidelity trial runs in a
    thread that waits for the decision, so the same compressed model is measured on."""

    def __init__(self, evaluator):
        self.evaluator = evaluator
        self.events: queue.Queue = queue.Queue()
        self.decisions: queue.Queue = queue.Queue()

    def start(self, job) -> tuple[str, object]:
        if not getattr(job, "low_first", False):
            return "done", run_job(self.evaluator, job)
        threading.Thread(target=self._run, args=(job,), name="presso-trial", daemon=True).start()
        return self.events.get()

    def decide(self, promoted: bool) -> tuple[str, object]:
        self.decisions.put(bool(promoted))
        return self.events.get()

    def _run(self, job) -> None:
        def promote(low_values: dict) -> bool:
            self.events.put(("low", low_values))
            return self.decisions.get()

        self.events.put(("done", run_job(self.evaluator, job, promote)))


def worker_study(config) -> tuple[dict, str, dict]:
    """The study as a worker gets it: the space inline (no file needed on the workers), a local
    model folder made absolute, and no store or tracking URL (no secrets on a cluster).
    Returns ``(study dict, base_dir, space dict)``."""
    from presso.spaces import load_space

    space = load_space(config.space if isinstance(config.space, dict) else config.resolve_path(str(config.space)))
    model = config.resolve_path(config.model)
    if not model.startswith(("builtin:", "tiny:")) and os.path.exists(model):
        model = os.path.abspath(model)
    data = replace(config, model=model, storage="sqlite:///:memory:", tracking_uri=None, backend="local",
                   workers=1).to_dict()
    data["space"] = space.to_dict()
    return data, os.path.abspath(config.base_dir), data["space"]


class WorkerView:
    """What the driver needs of an Evaluator, without loading the model: the space bound to
    the module names a worker reported, its objectives and its (already checked) constraints."""

    def __init__(self, config, space_dict: dict, description: dict):
        from presso.spaces import load_space

        space = load_space(space_dict)
        self.space_dict = space.to_dict()
        self.config = config
        self.module_names, self.embedding_names = description["module_names"], description["embedding_names"]
        self.bound = space.bind(self.module_names, exact_names=self.embedding_names)
        self.objective_specs = list(description["objective_specs"])
        self.constraints = list(description["constraints"])
        self.size_terms = dict(description.get("size_terms") or {})
        self.weight_shapes = dict(description["weight_shapes"])
        self._dense_files = dict(description.get("dense_files") or {})

    def dense_files(self) -> dict[str, str]:
        return dict(self._dense_files)
