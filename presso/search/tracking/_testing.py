"""Synthetic studies that follow the ``_records`` contract, for tests of anything that reads a
study (tracking, CLI reports) without running a model. Not part of the public API."""

from __future__ import annotations

import datetime
import random

from presso.search._records import STUDY_ATTR

MODULES = tuple(
    f"model.layers.{block}.{part}"
    for block in range(2)
    for part in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
)
SPACE = {
    "name": "test-two-groups",
    "defaults": {"criterion": "magnitude"},
    "groups": [
        {"name": "attn", "modules": ["model.layers.*.self_attn.*"], "tie": "block",
         "sparsity": {"low": 0.0, "high": 0.6, "step": 0.2}, "bits": [4, 8, 16], "group_size": [32]},
        {"name": "mlp", "modules": ["model.layers.*.mlp.*"], "tie": "block",
         "sparsity": {"low": 0.0, "high": 0.6, "step": 0.2}, "bits": [4, 8, 16], "group_size": [32], "rank": [0, 8]},
    ],
}
OBJECTIVES = [
    {"name": "ppl_ratio", "direction": "minimize", "unit": "x"},
    {"name": "size_fraction", "direction": "minimize", "unit": ""},
]
CONSTRAINT_LIMIT = 2.0  # "ppl_ratio <= 2.0"


def create_study(storage, name: str = "tracking-demo"):
    """An Optuna study with the Presso study attribute (two objectives, one constraint)."""
    import optuna

    study = optuna.create_study(study_name=name, storage=storage, directions=["minimize", "minimize"])
    study.set_user_attr(STUDY_ATTR, {
        "version": "0.1.0", "model": "tiny:llama", "objectives": OBJECTIVES,
        "constraints": [f"ppl_ratio <= {CONSTRAINT_LIMIT}"], "space": SPACE,
        "space_fingerprint": "test", "sampler": "random", "trials": 10, "seed": 0,
    })
    return study


def sample_plan(seed: int) -> tuple[dict, dict]:
    """A plan (``plan_to_dict`` envelope) drawn from :data:`SPACE`, and the sampler params."""
    from presso.plan import plan_to_dict
    from presso.spaces import Choice, FloatRange, IntRange, SearchSpace

    rng = random.Random(seed)
    params = {}

    def ask(name, domain):
        if isinstance(domain, Choice):
            value = rng.choice(list(domain.values))
        elif isinstance(domain, (FloatRange, IntRange)):
            steps = int(round((domain.high - domain.low) / domain.step))
            value = domain.low + rng.randint(0, steps) * domain.step
            value = round(value, 10) if isinstance(domain, FloatRange) else int(value)
        else:
            value = domain.value
        params[name] = value
        return value

    plan = SearchSpace.from_dict(SPACE).bind(MODULES).sample(ask, model="tiny:llama")
    return plan_to_dict(plan), params


def _distribution(name: str):
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    key = name.rsplit("/", 1)[1]
    if key == "sparsity":
        return FloatDistribution(0.0, 0.6, step=0.2)
    return CategoricalDistribution({"bits": (4, 8, 16), "group_size": (32,), "rank": (0, 8)}[key])


def add_trial(study, ppl_ratio: float | None, size_fraction: float | None, *, seed: int = 0,
              failure: str | None = None, state: str | None = None, duration_s: float = 2.0, **extra_attrs):
    """Add one finished trial carrying the contract's user attributes; returns the stored
    :class:`optuna.trial.FrozenTrial` (what the driver hands to ``on_trial_end``)."""
    import optuna
    from optuna.trial import TrialState

    plan, params = sample_plan(seed)
    distributions = {name: _distribution(name) for name in params}
    user_attrs = {"plan": plan, "worker": "localhost:1234", **extra_attrs}
    if failure is not None:
        trial_state = TrialState.FAIL
        user_attrs["failure"] = failure
        values = None
    elif state is not None:
        trial_state = TrialState[state]
        values = None
    else:
        trial_state = TrialState.COMPLETE
        values = [ppl_ratio, size_fraction]
        user_attrs["values"] = {"ppl_ratio": ppl_ratio, "size_fraction": size_fraction}
        user_attrs["metrics"] = {"size_bytes": int(size_fraction * 1_000_000), "dense_bytes": 1_000_000}
    user_attrs["timings"] = {"load_s": 0.1, "compress_s": 0.4, "evaluate_s": duration_s - 0.5, "total_s": duration_s}
    constraints = {"0": ppl_ratio - CONSTRAINT_LIMIT} if values is not None else None
    trial = optuna.trial.create_trial(state=trial_state, values=values, params=params, distributions=distributions,
                                      user_attrs=user_attrs, constraints=constraints)
    end = datetime.datetime.now()
    trial.datetime_start = end - datetime.timedelta(seconds=duration_s)
    trial.datetime_complete = end if trial_state != TrialState.RUNNING else None
    study.add_trial(trial)
    return study.get_trials(deepcopy=False)[-1]
