"""What a Presso study stores in Optuna, and how to read it back.

The SQL study store is the source of truth; MLflow and the CLI read it through these helpers.

Study user attribute ``"presso"`` (set when the study is created)::

    {"version": "0.1.0", "model": "builtin:smollm2-135m",
     "objectives": [{"name": "ppl_ratio", "direction": "minimize", "unit": "x"}, ...],
     "constraints": ["ppl_ratio <= 2.0"], "space": {...space as data...},
     "space_fingerprint": "sha256...", "eval": {...}, "sampler": "evo", "trials": 30, "seed": 0,
     "modules": {"exact": ["model.embed_tokens"], "blocks": ["model.layers.0.self_attn.q_proj", ...]}}

``size`` (``{"counts": ..., "dense": ...}``) says in words what the trials' ``size_bytes`` and
``dense_bytes`` count (the target's file; the dense weights and their type), for every place
that prints a size (:func:`size_note`).

``modules`` are the names the space was bound to (``SearchSpace.bind``); with ``space`` and
``model`` they rebuild any trial's plan from its parameters (:func:`plan_source`), so a trial
does not store its plan (a SmolLM2 plan is about 40 KB, the parameters a few hundred bytes).

Trial user attributes:

- ``plan``: only in studies written before the plan moved to the study attribute (read
  either form: a stored plan wins);
- ``values``: ``{objective name: value}`` (also the Optuna values, in objective order);
- ``metrics``: extra measurements (``size_bytes``, ``dense_bytes``, ...);
- ``timings``: ``{"load_s", "compress_s", "evaluate_s", "total_s"}`` in seconds;
- ``worker``: ``host:pid`` of the process that ran it;
- ``failure``: one-line reason when the trial failed (counts towards the budget);
- ``interrupted``: set when the run was stopped during the trial (not counted, retried);
- ``cancelled``: set on a surplus trial another worker's trial made unnecessary (PRUNED, not counted).
- ``low_values``: multi-fidelity: the values on the short text (every trial that had a
  low-fidelity look); a trial stopped there is PRUNED, counts towards the budget, and also has
  ``promotion`` (``dominated_by``, ``compared_with``, ``max_dominated``, ``warmup``, ``promoted``);
- ``seeded``: ``uniform``, ``sensitivity`` or ``from_study`` on warm-start plans.

Constraint values go through ``trial.set_constraint`` (<= 0 is feasible).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Callable

STUDY_ATTR = "presso"
MODULES_KEY = "modules"
SIZE_KEY = "size"
_OLD_SIZE_TERMS = {"counts": "the weights file", "dense": "the dense weights"}  # studies stored before ``size``


@dataclass
class TrialRow:
    number: int
    state: str  # COMPLETE | FAIL | RUNNING | WAITING | PRUNED
    values: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    plan: dict | None = None  # built on first read from the params when not stored (see below)
    timings: dict[str, float] = field(default_factory=dict)
    failure: str | None = None
    feasible: bool = True
    params: dict = field(default_factory=dict)
    user_attrs: dict = field(default_factory=dict)
    datetime_start: object = None
    datetime_complete: object = None
    trial_id: int | None = None  # Optuna's storage id (to read one trial's details)
    plan_source: Callable[[], dict | None] | None = field(default=None, repr=False, compare=False)

    @property
    def counted(self) -> bool:
        """Whether the trial uses up budget: complete, failed for a reason of its own, or
        stopped after its low-fidelity look (multi-fidelity)."""
        return (self.state == "COMPLETE" or (self.state == "FAIL" and self.failure is not None)
                or (self.state == "PRUNED" and "low_values" in self.user_attrs))


def _get_plan(row: TrialRow) -> dict | None:
    if row._plan is None and row.plan_source is not None:
        row._plan, row.plan_source = row.plan_source(), None
    return row._plan


def _set_plan(row: TrialRow, value: dict | None) -> None:
    row._plan = value


# NOTE: a property installed after @dataclass keeps ``TrialRow(plan=...)`` working while a row
# built from a trial rebuilds its plan only when someone reads it (status of 10,000 trials
# reads values only; the front's few plans are built on demand).
TrialRow.plan = property(_get_plan, _set_plan, doc="The trial's plan as ``plan_to_dict`` data, or None.")


def row_from_trial(trial, plans: Callable[[dict], dict | None] | None = None) -> TrialRow:
    """The :class:`TrialRow` of an Optuna trial; ``plans`` (:func:`plan_source`) rebuilds the
    plan from the parameters when the trial does not store one."""
    attrs = dict(trial.user_attrs)
    constraints: list[float] = []
    for key, value in (trial.system_attrs or {}).items():
        if key.startswith("constraints:"):  # Optuna 5: one attribute per trial.set_constraint
            constraints.append(float(value))
        elif key == "constraints" and isinstance(value, (list, tuple)):  # older constraints_func format
            constraints.extend(float(v) for v in value)
    feasible = all(v <= 0.0 for v in constraints)
    row = TrialRow(
        number=trial.number,
        state=trial.state.name,
        values=dict(attrs.get("values") or {}),
        metrics=dict(attrs.get("metrics") or {}),
        plan=attrs.get("plan"),
        timings=dict(attrs.get("timings") or {}),
        failure=attrs.get("failure"),
        feasible=feasible,
        params=dict(trial.params),
        user_attrs=attrs,
        datetime_start=trial.datetime_start,
        datetime_complete=trial.datetime_complete,
    )
    if row.plan is None and plans is not None and trial.params:
        params = dict(trial.params)
        row.plan_source = lambda: plans(params)
    return row


def study_info(study) -> dict:
    return dict(study.user_attrs.get(STUDY_ATTR) or {})


def objective_names(study) -> list[str]:
    return [o["name"] for o in study_info(study).get("objectives", [])]


def objective_directions(study) -> list[str]:
    return [o["direction"] for o in study_info(study).get("objectives", [])]


def size_note(info: dict, rows: list[TrialRow]) -> str | None:
    """One line saying what ``size_bytes`` / ``size_fraction`` count, with the dense bytes of
    ``rows`` (the same for every trial of a study); None when no row has sizes."""
    dense = next((r.metrics["dense_bytes"] for r in rows if r.metrics.get("dense_bytes")), None)
    if dense is None:
        return None
    terms = info.get(SIZE_KEY) or _OLD_SIZE_TERMS
    return (f"size_bytes: {terms['counts']}; size_fraction = size_bytes / {int(dense):,} bytes, "
            f"{terms['dense']}")


def modules_info(bound_names: list[str], exact_names: list[str]) -> dict:
    """The ``modules`` entry of the study attribute: what ``SearchSpace.bind`` was given."""
    return {"exact": list(exact_names), "blocks": list(bound_names)}


def plan_source(info: dict) -> Callable[[dict], dict | None] | None:
    """A function from a trial's parameters to its plan (``plan_to_dict`` data), rebuilt from
    the study attribute exactly as the driver built it when the trial ran (same space, same
    module names, same model); None for a study written before ``modules`` was stored (its
    trials keep their plans)."""
    if not info.get(MODULES_KEY) or not isinstance(info.get("space"), dict):
        return None
    return _plan_builder(json.dumps([info["space"], info.get("model"), info[MODULES_KEY]], sort_keys=True))


@functools.lru_cache(maxsize=8)
def _plan_builder(key: str) -> Callable[[dict], dict | None]:
    from presso.plan import plan_to_dict
    from presso.spaces import load_space

    space, model, modules = json.loads(key)
    bound = load_space(space).bind(modules["blocks"], exact_names=modules["exact"])

    def build(params: dict) -> dict | None:
        try:
            plan = bound.sample(lambda name, _domain: params[name], model=model)
        except KeyError:  # a trial still being suggested, or one that failed half-way
            return None
        return plan_to_dict(plan)

    return build


def rows_of(study, trials) -> list[TrialRow]:
    """Rows of ``trials`` (of ``study``), their plans rebuilt on demand."""
    plans = plan_source(study_info(study))
    return [row_from_trial(t, plans) for t in trials]


def trial_rows(study, states=None) -> list[TrialRow]:
    """Every trial of ``study`` (or those in ``states``, Optuna ``TrialState`` values) as rows."""
    return rows_of(study, study.get_trials(deepcopy=False, states=states))


def pareto_rows(study, rows: list[TrialRow] | None = None) -> list[TrialRow]:
    """The feasible, complete, non-dominated trials, by trial number."""
    from presso.objectives import pareto_front

    if rows is None:  # values first, then the front's details only
        from presso.search._index import StudyIndex, full_rows

        return sorted(full_rows(study, StudyIndex(study).refresh().front), key=lambda r: r.number)
    names, directions = objective_names(study), objective_directions(study)
    candidates = [r for r in rows if r.state == "COMPLETE" and r.feasible and all(n in r.values for n in names)]
    return pareto_front(candidates, directions, key=lambda r: [r.values[n] for n in names])
