"""Observers follow a study as it runs (MLflow tracking is one). Every hook is optional and
must never stop the study: the driver catches and reports an observer's errors once."""

from __future__ import annotations


class StudyObserver:
    """Lifecycle: ``on_run_start`` once per ``presso run`` invocation (a resumed study gets a
    new run), ``on_trial_end`` after each trial is told to the store (complete, failed,
    interrupted), ``on_run_end`` once when the run stops (budget reached, interrupted or error).
    """

    def on_run_start(self, study, config) -> None:
        """``config`` is the :class:`~presso.search.StudyConfig` of this invocation."""

    def on_trial_end(self, study, trial) -> None:
        """``trial`` is the :class:`optuna.trial.FrozenTrial` as stored."""

    def on_run_end(self, study, status: str) -> None:
        """``status`` is ``"FINISHED"``, ``"KILLED"`` (interrupted) or ``"FAILED"``."""
