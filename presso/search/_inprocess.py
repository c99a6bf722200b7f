"""The ``local`` executor: jobs run one at a time in this process, on one Evaluator.

A job runs inside :meth:`wait`, so Ctrl-C or SIGTERM (turned into an interrupt by the CLI)
reaches the loop, which records the trial for a retry.
"""

from __future__ import annotations

from presso.search._executor import Executor
from presso.search._jobs import run_job, where


class InProcessExecutor(Executor):
    """Args:
        config: the study.
        evaluator: a ready :class:`~presso.search.Evaluator` (built from ``config`` when None).
    """

    name = "local"

    def __init__(self, config, evaluator=None):
        super().__init__(config)
        self.evaluator = evaluator
        self.pending: tuple[int, object, object] | None = None
        self.count = 0

    def start(self):
        if self.evaluator is None:
            from presso.search._evaluator import Evaluator

            self.evaluator = Evaluator(self.config)
        return self.evaluator

    def free(self) -> int:
        return 0 if self.pending else 1

    def submit(self, job, promote=None) -> int:
        self.count += 1
        self.pending = (self.count, job, promote)
        return self.count

    def wait(self, timeout_s: float):
        if self.pending is None:
            return []
        handle, job, promote = self.pending
        try:
            return [(handle, run_job(self.evaluator, job, promote))]
        finally:
            self.pending = None

    def where(self, handle: int) -> str:
        return where()
