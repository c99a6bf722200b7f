"""Objectives: named numbers measured on a compressed model, plus constraints, pick rules
and Pareto maths.

Importing this package does not import torch, transformers, Optuna, Ray or MLflow; torch
loads inside the functions that measure. See ``README.md`` here for the catalogue.

Per worker, once::

    objectives = [get_objective(n) for n in ("ppl_ratio", "size_fraction")]
    ctx = EvalContext(task="causal-lm", device="cuda:0", input_ids=eval_ids,
                      attention_mask=eval_mask, tokenizer=tok, dense_model=dense)
    prepare_all(objectives, ctx)

Per trial::

    values = measure_all(objectives, compressed, ctx,
                         TrialContext(number=n, size_bytes=s, dense_bytes=d))
"""

from presso.objectives import (  # noqa: F401 - registers built-ins
    _embedding, _kernel_latency, _language, _latency, _llama_latency, _size, _task, _vllm_latency,
)
from presso.objectives._base import (
    BaseObjective,
    Direction,
    EvalContext,
    LabelledData,
    NonFiniteObjective,
    TaggedData,
    Task,
    TrialContext,
    check_finite,
    measure_all,
    prepare_all,
)
from presso.objectives._kernel_latency import COMPRESSION_KEY
from presso.objectives._constraints import (
    CONSTRAINT_GRAMMAR,
    Constraint,
    check_constraints,
    constraint_values,
    parse_constraint,
    total_violation,
)
from presso.objectives._data import assert_disjoint, load_conll, load_labelled, load_labelled_csv, load_labelled_jsonl
from presso.objectives._pareto import dominates, hypervolume, pareto_front
from presso.objectives._pick import PICK_GRAMMAR, PickRule, parse_pick_rule
from presso.objectives._task import (
    TASK_METRICS,
    dense_report_files,
    predict,
    report_files,
    task_report,
    task_scores,
    trial_report_files,
)
from presso.objectives._registry import (
    get_objective,
    objective_class,
    objective_directions,
    register_objective,
    registered_objectives,
    unregister_objective,
)

__all__ = [
    "COMPRESSION_KEY",
    "CONSTRAINT_GRAMMAR",
    "PICK_GRAMMAR",
    "BaseObjective",
    "Constraint",
    "Direction",
    "EvalContext",
    "LabelledData",
    "NonFiniteObjective",
    "PickRule",
    "TASK_METRICS",
    "TaggedData",
    "Task",
    "TrialContext",
    "assert_disjoint",
    "check_constraints",
    "check_finite",
    "constraint_values",
    "dense_report_files",
    "dominates",
    "get_objective",
    "hypervolume",
    "load_conll",
    "load_labelled",
    "load_labelled_csv",
    "load_labelled_jsonl",
    "measure_all",
    "objective_class",
    "objective_directions",
    "pareto_front",
    "parse_constraint",
    "parse_pick_rule",
    "predict",
    "prepare_all",
    "register_objective",
    "registered_objectives",
    "report_files",
    "task_report",
    "task_scores",
    "total_violation",
    "trial_report_files",
    "unregister_objective",
]
