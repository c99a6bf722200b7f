"""Warm starts: plans enqueued when a study is created, before the sampler takes over.

Sources, in the order they are enqueued (duplicates are enqueued once):

1. ``from_study``: the Pareto front of an earlier study. Its stored plans are mapped onto this
   study's space unit by unit (a unit takes the config most of its modules had; values outside
   a domain go to the nearest allowed choice), so a front found with another space, another
   tie or another budget still seeds this one. Plans that match no module are skipped.
2. ``sensitivity``: OWL-style allocation (Yin et al., 2024, "Outlier Weighed Layerwise
   sparsity": layers get ``S +- lambda`` around a target by how sensitive they are), here over
   every choice a unit has, not sparsity alone:

   * each unit-choice's relative weight damage comes from the weights alone: the
     activation-weighted squared error ``sum_ij (W - W_hat)_ij^2 * ||X_j||^2`` (the Wanda/OBS
     proxy of the output error) over its dense value, kept apart for pruning and quantization;
     in a space of ggml formats or with GPTQ on offer, quantization errors are output errors
     through the layer's input Hessian, ``sum_r dW_r H dW_r^T`` (ggml's own blocks, GPTQ inside
     them where the choice says so): the diagonal proxy would rank GPTQ no better than RTN;
   * each unit's sensitivity is measured once per technique, on the short (low-fidelity) text:
     the quality loss when ONLY that unit is pruned as hard as the space allows, and when only
     that unit is quantized as coarsely as it allows; loss per unit of error gives each unit
     and technique its own scale (weight error alone ranks pruning far too mild on SmolLM2);
   * the predicted loss of a plan is the sum over units of scale x error, and its size is
     exact (every module's stored layout is computed without compressing anything);
   * anchors are uniform plans spread over the sizes where compression still costs something;
     for each, the plan of at most the anchor's size with the least predicted loss is found
     exactly by dynamic programming, each unit staying within 30% of the anchor's per-unit
     size: sensitive units get gentler choices, robust ones harsher, the recipe's size stays.
     (Unrestricted allocations drifted to extremes the additive model mispredicts.)

3. ``uniform``: a few uniform plans (every unit the same choice, or the nearest a group offers)
   spread evenly over their sizes, the smallest and the largest included; of plans with equal
   size (one grid under two methods) the one with the least estimated error.

The ``uniform`` sampler is not warm-started: it walks every uniform plan itself.

The pieces live with their layers: mapping plans onto a space in :mod:`presso.spaces`
(:func:`~presso.spaces.plan_to_params`, :func:`~presso.spaces.unit_choices`), stored sizes and
weight errors in :mod:`presso.compress` (:func:`~presso.compress.stored_weight_bytes`,
:func:`~presso.compress.weighted_errors`), the allocation maths in ``_allocation``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from presso.errors import PressoError
from presso.search._allocation import UnitChoice, allocate_near_uniform, choices_of

_LOG_OBJECTIVES = ("ppl_ratio", "perplexity")  # losses compared as log ratios (additive over units)


@dataclass
class WarmStartReport:
    """What :func:`enqueue_warm_start` enqueued, by source, with notes for the user."""

    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    sensitivity: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict:
        return {"counts": dict(self.counts), "notes": list(self.notes), "sensitivity": dict(self.sensitivity),
                "seconds": {k: round(v, 3) for k, v in self.seconds.items()}}


def enqueue_warm_start(study, config, evaluator, storage_url: str | None = None) -> WarmStartReport:
    """Enqueue the warm-start plans ``config.warm_start`` asks for into a new ``study``.

    Args:
        study: the freshly created Optuna study.
        config: the :class:`~presso.search.StudyConfig`.
        evaluator: the worker's :class:`~presso.search.Evaluator` (sensitivity probes use it).
        storage_url: where ``from_study`` lives when ``warm_start.from_storage`` is not set
            (default: ``config.storage``).

    Returns:
        A :class:`WarmStartReport`.
    """
    warm = config.warm_start
    bound = evaluator.bound
    report = WarmStartReport()
    seen: set[tuple] = set()

    def enqueue(params: dict, source: str, attrs: dict | None = None) -> bool:
        signature = tuple(sorted(params.items()))
        if signature in seen:
            return False
        seen.add(signature)
        study.enqueue_trial(params, user_attrs={"seeded": source, **(attrs or {})})
        report.counts[source] = report.counts.get(source, 0) + 1
        return True

    combos = bound.uniform_choices()
    if config.sampler == "uniform":
        for combo in combos[: config.trials]:
            enqueue(bound.params_for(combo), "uniform")
        return report
    if warm.from_study:
        started = time.perf_counter()
        for params, attrs in front_params(warm.from_study, warm.from_storage or storage_url or config.storage,
                                          bound, report.notes):
            enqueue(params, "from_study", attrs)
        report.seconds["from_study"] = time.perf_counter() - started
    if warm.sensitivity:
        started = time.perf_counter()
        count = min(warm.sensitivity_plans, max(2, config.trials // 5))
        try:
            plans, report.sensitivity = sensitivity_plans(evaluator, count)
        except Exception as exc:  # noqa: BLE001 - a warm start is optional; it must never stop the study
            reason = str(exc) if isinstance(exc, PressoError) else f"{type(exc).__name__}: {exc}"
            report.notes.append(f"warm start: no sensitivity-guided plans ({' '.join(reason.split())[:300]})")
            plans = []
        for params, attrs in plans:
            enqueue(params, "sensitivity", attrs)
        report.seconds["sensitivity"] = time.perf_counter() - started
    if warm.uniform and combos:
        for combo in spread_by_size(combos, bound, evaluator, max(1, config.trials // 5)):
            enqueue(bound.params_for(combo), "uniform")
    return report


def spread_by_size(combos, bound, evaluator, count: int) -> list[dict]:
    """``count`` of the uniform ``combos`` evenly spread over their stored sizes, the smallest and
    the largest that compresses anything included: the corners of the front, which later
    mutations cannot reach quickly (the uncompressed plan is no seed: the dense model's point).

    Combos of equal size (the same grid under rtn and gptq) count once, as the one with the
    least estimated error (see :func:`_least_error`): the first listed would seed RTN at every
    4-bit size of a space where GPTQ is on offer."""
    import torch

    from presso.compress import stored_weight_bytes

    shapes = {name: (shape, getattr(torch, dtype)) for name, (shape, dtype) in evaluator.weight_shapes.items()}
    by_size: dict[int, list] = {}
    for combo in combos:
        params = bound.params_for(combo)
        plan = bound.sample(lambda name, domain, params=params: params[name])
        if any(cfg.sparsity.active or cfg.quant.active for cfg in plan.layers.values()):
            size = sum(stored_weight_bytes(cfg, *shapes[m], plan.criterion) for m, cfg in plan.layers.items()
                       if m in shapes)
            by_size.setdefault(size, []).append((combo, plan))
    ordered = [tied[0][0] if len(tied) == 1 else _least_error(evaluator, tied)
               for _, tied in sorted(by_size.items())]
    if count >= len(ordered):
        return ordered
    if count == 1:
        return [ordered[len(ordered) // 2]]
    return [ordered[round(i * (len(ordered) - 1) / (count - 1))] for i in range(count)]


def _least_error(evaluator, tied: list[tuple[dict, object]]) -> dict:
    """The combo of ``[(combo, plan), ...]`` whose plan has the least relative activation-weighted
    error summed over its modules (quantization errors through the input Hessians when a plan's
    method needs them, so GPTQ is credited for the output error it saves)."""
    from presso.compress import target_modules, weighted_errors

    stats = _calibration(evaluator, [cfg.quant for _, plan in tied for cfg in plan.layers.values()])
    modules = target_modules(evaluator.loaded.model)
    cache = evaluator.assets.quantized_layers()

    def error(plan) -> float:
        by_config: dict = {}
        for name, cfg in plan.layers.items():
            by_config.setdefault(cfg, []).append(name)
        total = dense = 0.0
        for cfg, names in by_config.items():
            e = weighted_errors({m: modules[m] for m in names}, stats, [cfg.sparsity], [cfg.quant], plan.criterion,
                                cache)
            total += e.prune[0] + (1.0 - cfg.sparsity.amount) * e.quant[0]
            dense += e.dense
        return total / max(dense, 1e-30)

    return min(tied, key=lambda pair: error(pair[1]))[0]


# -- from an earlier study --------------------------------------------------------------------

def front_params(name: str, storage_url: str, bound, notes: list[str]) -> list[tuple[dict, dict]]:
    """Parameters for this space from the Pareto front of study ``name`` (notes say what moved)."""
    from presso.plan import plan_from_dict
    from presso.search._records import pareto_rows
    from presso.search._storage import load_existing_study
    from presso.spaces import plan_to_params

    old = load_existing_study(name, storage_url)
    rows = pareto_rows(old)
    if not rows:
        notes.append(f"warm start: study {name!r} has no complete feasible trial; nothing to start from")
        return []
    out, mapped_plans, skipped = [], 0, []
    for row in rows:
        if not row.plan:
            skipped.append(f"#{row.number} (no stored plan)")
            continue
        try:
            plan = plan_from_dict(row.plan)
            params, mapped = plan_to_params(plan, bound)
        except PressoError as exc:
            skipped.append(f"#{row.number} ({exc})")
            continue
        mapped_plans += mapped > 0
        out.append((params, {"from_trial": f"{name}#{row.number}", "mapped_values": mapped}))
    note = f"warm start: {len(out)} plan(s) from the front of study {name!r}"
    if mapped_plans:
        note += f", {mapped_plans} moved to the nearest choices of this space"
    if skipped:
        note += f"; skipped {len(skipped)}: " + ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else "")
    notes.append(note)
    return out


# -- sensitivity-guided allocation ------------------------------------------------------------

def _weighted_errors(unit, choices, modules, stats, criterion, cache=None) -> None:
    """Fill each choice's relative activation-weighted error (pruning + quantization, added)."""
    from presso.compress import weighted_errors

    sparsities = {(c.config.sparsity.amount, c.config.sparsity.structure): c.config.sparsity for c in choices}
    quants = {c.config.quant: c.config.quant for c in choices}
    errors = weighted_errors({m: modules[m] for m in unit.modules}, stats, list(sparsities.values()),
                             list(quants.values()), criterion, cache)
    prune_err = dict(zip(sparsities, errors.prune))
    quant_err = dict(zip(quants, errors.quant))
    total = max(errors.dense, 1e-30)
    for c in choices:
        sp, q = c.config.sparsity, c.config.quant
        c.prune_error = prune_err[(sp.amount, sp.structure)] / total
        c.quant_error = (1.0 - sp.amount) * quant_err[q] / total
        c.error = c.prune_error + c.quant_error


def _calibration(evaluator, quants):
    """The calibration statistics errors are measured with: with input Hessians when one of the
    ``quants`` has a ggml format (measured through them, see format_errors) or a method that
    needs them (GPTQ's gain shows only in the output error); trials of such a space collect
    them anyway."""
    base_plan = evaluator.bound.space.base_plan({}, model=evaluator.config.model)
    hessians = any(q.format is not None or q.needs == "hessian" for q in quants)
    return evaluator.assets.calibration(base_plan.calibration_samples, base_plan.calibration_seq_len,
                                        hessians=hessians)


def _probes(choices) -> dict[str, UnitChoice | None]:
    """The unit's hardest pruning alone and its coarsest quantization alone (None when the
    space offers no pruning, or no quantization, for the unit)."""
    from presso.plan import LayerConfig, SparsityConfig

    pruned = [c.config.sparsity for c in choices if c.config.sparsity.active]
    quantized = [c.config.quant for c in choices if c.config.quant.active]
    out: dict[str, UnitChoice | None] = {"prune": None, "quant": None}
    if pruned:
        sp = max(pruned, key=lambda x: x.amount)
        out["prune"] = UnitChoice({}, LayerConfig(sparsity=SparsityConfig(amount=sp.amount, structure=sp.structure)))
    if quantized:
        q = min(quantized, key=_coarseness)
        out["quant"] = UnitChoice({}, LayerConfig(quant=q))
    return out


def _coarseness(q) -> tuple:
    """Sort key: the fewest bits per weight first (a ggml format by its stored bits), then the
    largest group; round to nearest before the other methods (the probe measures the format)."""
    from presso.plan import FORMAT_BITS

    if q.format is not None:
        return (FORMAT_BITS[q.format], 0, q.method != "rtn")
    return (q.bits, -(q.group_size or 1 << 30), q.method != "rtn")


def _quality_objective(evaluator):
    for objective, spec in zip(evaluator.objectives, evaluator.objective_specs):
        if getattr(objective, "needs_model", True) and not spec.name.startswith("latency"):
            return spec
    raise PressoError("no quality objective to measure sensitivity with (only size or latency objectives)")


def _loss(spec, value: float, base: float) -> float:
    if spec.name in _LOG_OBJECTIVES:
        return math.log(max(value, 1e-12)) - math.log(max(base, 1e-12))
    return value - base if spec.direction == "minimize" else base - value


def sensitivity_plans(evaluator, count: int) -> tuple[list[tuple[dict, dict]], dict[str, float]]:
    """Sensitivity-guided plans at ``count`` target sizes, and each unit's measured sensitivity.

    Returns:
        ``([(params, user_attrs), ...], {unit: sensitivity})``.

    Raises:
        PressoError: the space offers no choice to allocate, or no quality objective exists.
    """
    from presso.compress import adapter_free_nbytes, fixed_nbytes, stored_weight_bytes, target_modules

    bound = evaluator.bound
    spec = _quality_objective(evaluator)
    base_plan = bound.space.base_plan({}, model=evaluator.config.model)
    criterion = base_plan.criterion
    modules = target_modules(evaluator.loaded.model)
    units = list(bound.units)
    per_unit = [choices_of(unit) for unit in units]
    stats = _calibration(evaluator, [c.config.quant for choices in per_unit for c in choices])
    cache = evaluator.assets.quantized_layers()  # GPTQ layers quantized here serve the trials too
    for unit, choices in zip(units, per_unit):
        for c in choices:
            c.size = sum(stored_weight_bytes(c.config, tuple(modules[m].weight.shape), modules[m].weight.dtype,
                                             criterion) for m in unit.modules)
        _weighted_errors(unit, choices, modules, stats, criterion, cache)
    if all(len(ch) < 2 for ch in per_unit):
        raise PressoError("every unit has a single choice; nothing to allocate")

    # Two probes per unit, on the short text: only that unit pruned as hard as the space allows
    # (no quantization), and only that unit quantized as coarsely as it allows (no pruning).
    # NOTE: one probe per unit mixing both was tried first: weight-space error then ranks
    # pruning far too mild against quantization on SmolLM2 (pruning errors are systematic,
    # rounding errors average out), so each technique gets its own loss-per-error scale.
    base = evaluator.evaluate(base_plan, fidelity="low").values[spec.name]
    sensitivity: dict[str, float] = {}
    scales = []
    for unit, choices in zip(units, per_unit):
        probes = _probes(choices)
        _weighted_errors(unit, [p for p in probes.values() if p is not None], modules, stats, criterion, cache)
        unit_scales = {}
        for kind, probe in probes.items():
            if probe is None:
                continue
            plan = bound.space.base_plan({m: probe.config for m in unit.modules}, model=evaluator.config.model)
            loss = _loss(spec, evaluator.evaluate(plan, fidelity="low").values[spec.name], base)
            sensitivity[f"{unit.param('')[:-1]}/{kind}"] = loss
            error = probe.prune_error if kind == "prune" else probe.quant_error
            unit_scales[kind] = (loss, error)
        scales.append(unit_scales)
    losses = [loss for unit_scales in scales for loss, _ in unit_scales.values()]
    floor = max(max(losses, default=0.0), 1e-9) * 1e-3  # a probe that measured no loss still costs a little
    damages = []
    for unit_scales, choices in zip(scales, per_unit):
        per_error = {k: max(loss, floor) / max(error, 1e-30) for k, (loss, error) in unit_scales.items()}
        damages.append([per_error.get("prune", 0.0) * c.prune_error + per_error.get("quant", 0.0) * c.quant_error
                        for c in choices])

    fixed = fixed_nbytes(evaluator.loaded.model, {m: modules[m] for unit in units for m in unit.modules})
    dense = adapter_free_nbytes(evaluator.loaded.model)
    plans = []
    for anchor, picks in allocate_near_uniform(bound, per_unit, damages, count):
        params: dict = {}
        for choices, index in zip(per_unit, picks):
            params.update(choices[index].params)
        size = (fixed + sum(ch[i].size for ch, i in zip(per_unit, picks))) / dense
        predicted = sum(d[i] for d, i in zip(damages, picks))
        plans.append((params, {"predicted_size_fraction": round(size, 5), "predicted_loss": round(predicted, 6),
                               "anchor": anchor}))
    return plans, {k: round(v, 6) for k, v in sensitivity.items()}
