"""Observers follow a study as it runs (MLflow tracking is one). Every hook is optional and
must never stop the study: the driver catches and reports an observer's errors once."""

from __future__ import annotations


class StudyObserver:
    """Lifecycle: ``on_run_start`` once per ``presso run`` invocation (a resumed study gets a
    new run), ``on_trial_end`` after each trial is told to the store (complete, failed,
    interrupted), ``on_run_end`` once when the run stops (budget reached, interrupted or error).
    ``on_files`` hands over text files that the study store does not keep (classification
    reports): once for the invocation after ``on_run_start``, and for a trial just before its
    ``on_trial_end``.
    """

    def on_run_start(self, study, config) -> None:
        """``config`` is the :class:`~presso.search.StudyConfig` of this invocation."""

    def on_trial_end(self, study, trial) -> None:
        """``trial`` is the :class:`optuna.trial.FrozenTrial` as stored."""

    def on_files(self, study, trial_number: int | None, files: dict[str, str]) -> None:
        """``files``: ``{relative path: text}`` for trial ``trial_number``, or for the invocation when None."""

    def on_run_end(self, study, status: str) -> None:
        """``status`` is ``"FINISHED"``, ``"KILLED"`` (interrupted) or ``"FAILED"``."""
