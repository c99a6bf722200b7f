"""Inspect studies in MLflow.

:class:`MlflowTracker` mirrors a running study to MLflow (one experiment per study, a parent run
per ``presso run`` invocation, a child run per trial, the Pareto front on the parent run);
:func:`sync_study` backfills MLflow from the study store (``presso sync``); :func:`start_ui`
serves the MLflow UI over the tracking store (``presso ui``).

Importing this package does not import MLflow; the classes and functions do, when used.
"""

from presso.search.tracking._mirror import SyncReport, sync_study
from presso.search.tracking._plots import write_front_pictures
from presso.search.tracking._summary import plan_summary
from presso.search.tracking._tracker import MlflowTracker
from presso.search.tracking._ui import (
    UiServer,
    experiment_url,
    free_port,
    run_url,
    spawn_ui,
    start_ui,
    study_urls,
    ui_url,
    wait_for_ui,
)

__all__ = [
    "MlflowTracker",
    "SyncReport",
    "UiServer",
    "experiment_url",
    "free_port",
    "plan_summary",
    "run_url",
    "spawn_ui",
    "start_ui",
    "study_urls",
    "sync_study",
    "ui_url",
    "wait_for_ui",
    "write_front_pictures",
]
