"""Search: the only package that imports Optuna, Ray and MLflow.

``run_study(config)`` drives an Optuna study in a SQL store, with its trials on an executor
(``local``, ``workers`` or ``ray``; ``register_executor`` adds one); ``presso.search.tracking``
follows it in MLflow.
"""

from presso.search._config import (
    BACKENDS,
    DEFAULT_STORAGE,
    DEFAULT_TRACKING,
    EvalConfig,
    ResourcesConfig,
    StudyConfig,
    load_study_file,
    study_from_dict,
)
from presso.search._driver import RunSummary, open_study, run_study
from presso.search._evaluator import (
    Evaluator,
    Outcome,
    RuntimeScorer,
    apply_plan,
    evaluate_saved,
    evaluate_saved_report,
    score_saved,
)
from presso.search._executor import Executor, executors, register_executor
from presso.search._observer import StudyObserver
from presso.search._index import StudyIndex
from presso.search._records import TrialRow, pareto_rows, study_info, trial_rows
from presso.search._results import check_format, check_pick_rule, export_plan, pareto_table, status_counts
from presso.search._samplers import make_sampler, register_sampler, sampler_names, unregister_sampler
from presso.search._storage import load_existing_study, open_storage, redact
from presso.search.optuna_space import suggest

__all__ = [
    "BACKENDS",
    "DEFAULT_STORAGE",
    "DEFAULT_TRACKING",
    "EvalConfig",
    "Evaluator",
    "Executor",
    "Outcome",
    "ResourcesConfig",
    "RunSummary",
    "RuntimeScorer",
    "StudyConfig",
    "StudyIndex",
    "StudyObserver",
    "TrialRow",
    "apply_plan",
    "check_format",
    "check_pick_rule",
    "evaluate_saved",
    "evaluate_saved_report",
    "executors",
    "export_plan",
    "load_existing_study",
    "load_study_file",
    "make_sampler",
    "open_storage",
    "open_study",
    "pareto_rows",
    "pareto_table",
    "redact",
    "register_executor",
    "register_sampler",
    "run_study",
    "sampler_names",
    "score_saved",
    "status_counts",
    "study_from_dict",
    "study_info",
    "suggest",
    "trial_rows",
    "unregister_sampler",
]
