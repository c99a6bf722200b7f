"""What a trial becomes in MLflow: filterable plan summaries, metrics, tags and a run status.

Pure functions over the stored records (no MLflow import), so the tracker, ``sync_study`` and
the tests build exactly the same payload from a :class:`optuna.trial.FrozenTrial`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from presso.plan import FORMAT_BITS
from presso.search._records import MODULES_KEY, TrialRow

# MLflow limits (mlflow.utils.validation): longer values are rejected, not cut.
MAX_PARAM_CHARS = 6000
MAX_TAG_CHARS = 8000
_KEY_BAD = re.compile(r"[^A-Za-z0-9_\-. /:]")

KIND_TAG = "presso.kind"
KIND_TRIAL = "trial"
KIND_RUN = "study-run"
NUMBER_TAG = "presso.trial_number"
STATE_TAG = "presso.state"
PARETO_TAG = "presso.pareto"
FAILURE_TAG = "presso.failure"
INVOCATION_TAG = "presso.invocation"
PREVIOUS_TAG = "presso.previous_run_id"
PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
NOTE_TAG = "mlflow.note.content"
SOURCE_TAGS = {"mlflow.source.name": "presso", "mlflow.source.type": "LOCAL"}

# Optuna state -> MLflow run status. PRUNED: a cancelled surplus trial (KILLED), or a
# multi-fidelity trial stopped after its short-text look (FINISHED, see trial_payload).
_STATUS = {"COMPLETE": "FINISHED", "FAIL": "FAILED", "PRUNED": "KILLED", "RUNNING": "RUNNING", "WAITING": "SCHEDULED"}
FINISHED_STATES = ("COMPLETE", "FAIL", "PRUNED")


def mlflow_key(key: str) -> str:
    """A metric or param name MLflow accepts (letters, digits, ``_ - . / : space``; 250 chars)."""
    return _KEY_BAD.sub("_", str(key))[:250] or "_"


def _cut(text: str, limit: int) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def plan_data(plan: Mapping | None) -> dict:
    """The ``_data`` of a stored plan envelope (or a bare hand-written plan mapping)."""
    if not isinstance(plan, Mapping):
        return {}
    data = plan.get("_data", plan)
    return dict(data) if isinstance(data, Mapping) else {}


class GroupIndex:
    """Maps module names of a plan to the space group that owns them, by the space's own rule
    (:func:`presso.spaces.module_group`, as ``SearchSpace.bind``). ``exact_names`` are the
    embedding tables the study bound (``modules.exact`` of the study record): they join a group
    only when it names them exactly. Built once per study; lookups are cached because every
    trial's plan names the same modules."""

    def __init__(self, space: Mapping | None, exact_names=()):
        self._space = None
        self._exact = frozenset(exact_names or ())
        self._cache: dict[str, str] = {}
        if isinstance(space, Mapping):
            try:
                from presso.spaces import SearchSpace

                self._space = SearchSpace.from_dict(dict(space))
            except Exception:  # noqa: BLE001 - a stale or foreign space only costs the per-group split
                self._space = None

    @classmethod
    def from_study_info(cls, info: Mapping) -> GroupIndex:
        """The index of a stored study: its space and the embedding tables it bound (a study
        stored before ``modules`` was recorded has no exact names)."""
        modules = info.get(MODULES_KEY) if isinstance(info.get(MODULES_KEY), Mapping) else {}
        return cls(info.get("space"), exact_names=modules.get("exact") or ())

    def group_of(self, module: str) -> str:
        if module not in self._cache:
            if self._space is None:
                self._cache[module] = "all"
            else:
                from presso.spaces import module_group

                self._cache[module] = module_group(self._space, module, self._exact) or "other"
        return self._cache[module]


def _layer_numbers(cfg: Mapping) -> tuple[float, float, str, int]:
    sparsity = cfg.get("sparsity") or {}
    quant = cfg.get("quant") or {}
    adapter = cfg.get("adapter") or {}
    return (
        float(sparsity.get("amount", 0.0) or 0.0),
        FORMAT_BITS[quant["format"]] if quant.get("format") else float(quant.get("bits", 16) or 16),
        str(sparsity.get("structure", "unstructured")),
        int(adapter.get("rank", 0) or 0),
    )


def _summarise(layers: list[tuple[float, float, str, int]]) -> dict[str, object]:
    amounts, bits, structures, ranks = zip(*layers)
    return {
        "sparsity_mean": sum(amounts) / len(amounts),
        "bits_mean": sum(bits) / len(bits),
        "structure": ",".join(sorted(set(structures))),
        "adapter_rank": ",".join(str(r) for r in sorted(set(ranks))),
    }


def plan_summary(plan: Mapping | None, groups: GroupIndex | None = None) -> dict[str, object]:
    """Filterable summary of a stored plan: criterion, recovery steps, and over the plan's
    modules (unweighted means) the sparsity, the bits (16 = kept), the structures and the adapter
    ranks, for the whole plan and per space group (``"<group>.bits_mean"``).

    Example::

        >>> plan = {"_data": {"criterion": "wanda", "layers": {
        ...     "m.0.q": {"sparsity": {"amount": 0.5}, "quant": {"bits": 4}},
        ...     "m.0.k": {"quant": {"bits": 8}}}}}
        >>> s = plan_summary(plan)
        >>> s["criterion"], s["sparsity_mean"], s["bits_mean"]
        ('wanda', 0.25, 6.0)
    """
    data = plan_data(plan)
    layers = data.get("layers") or {}
    out: dict[str, object] = {"criterion": str(data.get("criterion", "magnitude"))}
    recovery = data.get("recovery") or {}
    out["recovery_steps"] = int(recovery.get("steps", 0) or 0) if isinstance(recovery, Mapping) else 0
    numbers = {name: _layer_numbers(cfg) for name, cfg in layers.items() if isinstance(cfg, Mapping)}
    if not numbers:
        return out
    out.update(_summarise(list(numbers.values())))
    groups = groups or GroupIndex(None)
    by_group: dict[str, list] = {}
    for name, values in numbers.items():
        by_group.setdefault(groups.group_of(name), []).append(values)
    for group, values in by_group.items():
        for key, value in _summarise(values).items():
            out[f"{group}.{key}"] = value
    return out


@dataclass
class TrialPayload:
    """Everything one child run holds, as MLflow wants it (strings for params and tags)."""

    number: int
    status: str
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    start_ms: int | None = None
    end_ms: int | None = None
    plan: dict | None = None


def to_ms(moment) -> int | None:
    """Optuna's naive local datetimes -> epoch milliseconds (as MLflow stores times)."""
    return None if moment is None else int(moment.timestamp() * 1000)


def _floats(mapping: Mapping | None) -> dict[str, float]:
    out = {}
    for key, value in (mapping or {}).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        out[str(key)] = float(value)
    return out


def trial_payload(row: TrialRow, trial, objectives: list[str], groups: GroupIndex | None, on_front: bool) -> TrialPayload:
    """Build the child run of one finished trial from its stored record.

    ``row`` is :func:`presso.search._records.row_from_trial` of ``trial``; ``objectives`` are the
    objective names in study order (values missing from the ``values`` attribute are read
    from ``trial.values``).
    """
    attrs = row.user_attrs
    interrupted, cancelled = bool(attrs.get("interrupted")), bool(attrs.get("cancelled"))
    low_values = attrs.get("low_values") if isinstance(attrs.get("low_values"), Mapping) else None
    status = _STATUS.get(row.state, "FAILED")
    if row.state == "FAIL" and (interrupted or row.failure is None):
        status = "KILLED"  # stopped by the user or a dead worker, not a bad plan; it is retried
    if row.state == "PRUNED" and low_values is not None:
        status = "FINISHED"  # multi-fidelity: measured on the short text only, and not promoted

    summary = plan_summary(row.plan, groups)
    params = {mlflow_key(k): _cut(_fmt(v) if isinstance(v, float) else v, MAX_PARAM_CHARS) for k, v in summary.items()}
    for name, value in row.params.items():  # the sampler's raw choices, e.g. "attn/blocks0-4/bits"
        params.setdefault(mlflow_key(name), _cut(value, MAX_PARAM_CHARS))

    values = dict(row.values)
    if trial.values is not None:
        for name, value in zip(objectives, trial.values):
            values.setdefault(name, value)
    metrics = {mlflow_key(k): v for k, v in _floats(values).items()}
    for key, value in _floats(row.metrics).items():
        metrics.setdefault(mlflow_key(key), value)
    for key, value in _floats(row.timings).items():
        metrics[mlflow_key(f"timing.{key}")] = value
    for key, value in _floats(getattr(trial, "constraints", None) or {}).items():
        metrics[mlflow_key(f"constraint.{key}")] = value
    for key, value in _floats(low_values).items():
        metrics[mlflow_key(f"low.{key}")] = value
    for key in ("sparsity_mean", "bits_mean"):
        if isinstance(summary.get(key), float):
            metrics[f"plan.{key}"] = summary[key]

    tags = {
        KIND_TAG: KIND_TRIAL,
        NUMBER_TAG: str(row.number),
        RUN_NAME_TAG: f"trial {row.number}",
        STATE_TAG: row.state,
        PARETO_TAG: "true" if on_front else "false",
        "presso.feasible": "true" if row.feasible else "false",
        **SOURCE_TAGS,
    }
    if row.failure:
        tags[FAILURE_TAG] = _cut(" ".join(str(row.failure).split()), MAX_TAG_CHARS)
        tags[NOTE_TAG] = _cut(f"Trial failed: {row.failure}", MAX_TAG_CHARS)
    if interrupted:
        tags["presso.interrupted"] = "true"
    if cancelled:
        tags["presso.cancelled"] = "true"
    if low_values is not None:
        tags["presso.fidelity"] = "low" if row.state == "PRUNED" else "full"
        promotion = attrs.get("promotion")
        if isinstance(promotion, Mapping) and "promoted" in promotion:
            tags["presso.promoted"] = "true" if promotion["promoted"] else "false"
    if attrs.get("seeded"):
        tags["presso.seeded"] = _cut(attrs["seeded"], 250)
    if attrs.get("worker"):
        tags["presso.worker"] = _cut(attrs["worker"], 250)
    if isinstance(attrs.get("kernels"), Mapping):  # the runtime's kernel per module, counted (kernels.json: the table)
        tags["presso.kernels"] = _cut("; ".join(f"{n} x {k}" for k, n in attrs["kernels"].items()), MAX_TAG_CHARS)
    start_ms, end_ms = to_ms(row.datetime_start), to_ms(row.datetime_complete)
    return TrialPayload(
        number=row.number,
        status=status,
        params=params,
        metrics=metrics,
        tags=tags,
        start_ms=start_ms,
        end_ms=end_ms if end_ms is not None else start_ms,
        plan=row.plan if isinstance(row.plan, dict) else None,
    )
