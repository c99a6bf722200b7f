"""Where trials run: the executor interface that the one study loop drives, and its registry.

The loop (:func:`presso.search.run_study`) asks, counts the budget, beats the heartbeats,
retries lost trials and tells the store; an executor only runs jobs (:mod:`presso.search._jobs`)
somewhere. Built in: ``local`` (this process), ``workers`` (local worker processes,
``--workers K``) and ``ray`` (Ray actors, ``--backend ray``).

Lifecycle: ``start()`` once (builds the evaluators; returns what the driver needs of one),
then ``submit``/``wait`` while the study runs, then ``close()`` (always, also after errors).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

from presso.errors import PressoError


class Executor(ABC):
    """Runs jobs; at most :attr:`free` more at a time.

    Args:
        config: the :class:`~presso.search.StudyConfig`.
    """

    name = ""

    def __init__(self, config):
        self.config = config

    @abstractmethod
    def start(self):
        """Start the workers; returns an Evaluator, or a :class:`~presso.search._jobs.WorkerView`."""

    @abstractmethod
    def free(self) -> int:
        """How many more jobs can be submitted now."""

    @abstractmethod
    def submit(self, job, promote=None) -> int:
        """Start ``job`` on a free worker and return its handle. ``promote(low_values) -> bool``
        answers a multi-fidelity trial's question, in the driver."""

    @abstractmethod
    def wait(self, timeout_s: float) -> list[tuple[int, object]]:
        """``[(handle, result)]`` of the jobs finished within ``timeout_s`` (maybe none). A
        result is an Outcome, a ``Failed``, a ``Lost`` (the worker died) or a ``SeedResult``."""

    def where(self, handle: int) -> str:
        """``host:pid`` of the worker running ``handle``, if known."""
        return ""

    def close(self) -> None:
        """Stop the workers (jobs still running are abandoned: the loop has recorded them)."""

    def run(self, job):
        """Submit ``job`` and wait for its result (warm starts)."""
        handle = self.submit(job)
        while True:
            for done, result in self.wait(1.0):
                if done == handle:
                    return result


def _local():
    from presso.search._inprocess import InProcessExecutor

    return InProcessExecutor


def _workers():
    from presso.search.workers import ProcessPoolExecutor

    return ProcessPoolExecutor


def _ray():
    from presso.search.ray_backend import RayExecutor

    return RayExecutor


# Built-ins load lazily (the Ray one imports Ray); plugins register classes directly.
_EXECUTORS: dict[str, Callable[[], type]] = {"local": _local, "workers": _workers, "ray": _ray}


def register_executor(name: str):
    """Class decorator: make an :class:`Executor` available as ``name``.

    Raises:
        PressoError: ``name`` is taken.
    """

    def add(cls):
        if name in _EXECUTORS:
            raise PressoError(f"executor: {name!r} is already registered; registered: {executors()}")
        _EXECUTORS[name] = lambda: cls
        return cls

    return add


def executors() -> list[str]:
    """The registered executor names."""
    return list(_EXECUTORS)


def executor_name(config) -> str:
    """``study.backend: ray`` -> ``ray``; otherwise ``workers`` with ``workers > 1``, else ``local``."""
    if config.backend != "local":
        return config.backend
    return "workers" if config.workers > 1 else "local"


def make_executor(config, name: str | None = None, **kwargs) -> Executor:
    """The executor ``name`` (default: :func:`executor_name`) for ``config``."""
    name = name or executor_name(config)
    if name not in _EXECUTORS:
        raise PressoError(f"executor: got {name!r}; registered: {executors()}")
    return _EXECUTORS[name]()(config, **kwargs)
