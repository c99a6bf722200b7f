"""What a Presso study stores in Optuna, and how to read it back.

The SQL study store is the source of truth; MLflow and the CLI read it through these helpers.

Study user attribute ``"presso"`` (set when the study is created)::

    {"version": "0.1.0", "model": "builtin:smollm2-135m",
     "objectives": [{"name": "ppl_ratio", "direction": "minimize", "unit": "x"}, ...],
     "constraints": ["ppl_ratio <= 2.0"], "space": {...space as data...},
     "space_fingerprint": "sha256...", "eval": {...}, "sampler": "evo", "trials": 30, "seed": 0}

Trial user attributes:

- ``plan``: the full plan (``plan_to_dict``), set before the trial is evaluated;
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

from dataclasses import dataclass, field

STUDY_ATTR = "presso"


@dataclass
class TrialRow:
    number: int
    state: str  # COMPLETE | FAIL | RUNNING | WAITING | PRUNED
    values: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    plan: dict | None = None
    timings: dict[str, float] = field(default_factory=dict)
    failure: str | None = None
    feasible: bool = True
    params: dict = field(default_factory=dict)
    user_attrs: dict = field(default_factory=dict)
    datetime_start: object = None
    datetime_complete: object = None

    @property
    def counted(self) -> bool:
        """Whether the trial uses up budget: complete, failed for a reason of its own, or
        stopped after its low-fidelity look (multi-fidelity)."""
        return (self.state == "COMPLETE" or (self.state == "FAIL" and self.failure is not None)
                or (self.state == "PRUNED" and "low_values" in self.user_attrs))


def row_from_trial(trial) -> TrialRow:
    attrs = dict(trial.user_attrs)
    constraints: list[float] = []
    for key, value in (trial.system_attrs or {}).items():
        if key.startswith("constraints:"):  # Optuna 5: one attribute per trial.set_constraint
            constraints.append(float(value))
        elif key == "constraints" and isinstance(value, (list, tuple)):  # older constraints_func format
            constraints.extend(float(v) for v in value)
    feasible = all(v <= 0.0 for v in constraints)
    return TrialRow(
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


def study_info(study) -> dict:
    return dict(study.user_attrs.get(STUDY_ATTR) or {})


def objective_names(study) -> list[str]:
    return [o["name"] for o in study_info(study).get("objectives", [])]


def objective_directions(study) -> list[str]:
    return [o["direction"] for o in study_info(study).get("objectives", [])]


def trial_rows(study) -> list[TrialRow]:
    return [row_from_trial(t) for t in study.get_trials(deepcopy=False)]


def pareto_rows(study, rows: list[TrialRow] | None = None) -> list[TrialRow]:
    """The feasible, complete, non-dominated trials, by trial number."""
    from presso.objectives import pareto_front

    rows = trial_rows(study) if rows is None else rows
    names, directions = objective_names(study), objective_directions(study)
    candidates = [r for r in rows if r.state == "COMPLETE" and r.feasible and all(n in r.values for n in names)]
    return pareto_front(candidates, directions, key=lambda r: [r.values[n] for n in names])
