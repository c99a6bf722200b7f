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

3. ``uniform``: a few uniform plans spread over the space (every unit the same choice).

The ``uniform`` sampler is not warm-started: it walks every uniform plan itself.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field

from presso.errors import PressoError

_LOG_OBJECTIVES = ("ppl_ratio", "perplexity")  # losses compared as log ratios (additive over units)
_DP_BINS = 2000
_FLAT = 0.02  # uniform plans whose predicted loss is under 2% of the worst one's are "free": no anchor
_NEAR = 0.3  # a unit's choice may differ in size from the uniform anchor's by at most 30%


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
    formats = any(f is not None for unit in bound.units for f in unit.group.format.grid())
    if warm.sensitivity and formats:
        # The weight-error and size maths below model Presso's own codes (bits/group_size), not
        # ggml's block formats: a format space is seeded with its uniform plans only.
        report.notes.append("warm start: no sensitivity-guided plans (the space lists ggml formats; "
                            "uniform plans seed it)")
    elif warm.sensitivity:
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
        count = min(len(combos), max(1, config.trials // (3 if formats else 5)))
        step = len(combos) / count
        for i in range(count):
            enqueue(bound.params_for(combos[int(i * step)]), "uniform")
    return report


# -- from an earlier study --------------------------------------------------------------------

def _majority(configs: list):
    counts: dict[str, list] = {}
    for cfg in configs:
        counts.setdefault(repr(cfg), []).append(cfg)
    return max(counts.values(), key=len)[0]


def _unit_values(cfg) -> dict[str, object]:
    """The space keys a layer config corresponds to (``None``: the module was left as is)."""
    from presso.plan import KEEP_BITS

    if cfg is None:
        return {"sparsity": 0.0, "structure": "unstructured", "bits": KEEP_BITS, "rank": 0}
    return {"sparsity": cfg.sparsity.amount, "structure": cfg.sparsity.structure, "bits": cfg.quant.bits,
            "group_size": cfg.quant.group_size, "symmetric": cfg.quant.symmetric, "method": cfg.quant.method,
            "format": cfg.quant.format,
            "rank": cfg.adapter.rank}


def plan_to_params(plan, bound) -> tuple[dict, int]:
    """Map ``plan`` onto ``bound``'s parameters, unit by unit.

    Returns:
        ``(params, mapped)``: the parameters, and how many values had to move to the nearest
        allowed choice (0 when the plan fits the space exactly).

    Raises:
        PressoError: the plan covers none of the space's modules (another model).
    """
    from presso.spaces._space import _nearest

    if not any(plan.config_for(m) is not None for unit in bound.units for m in unit.modules):
        raise PressoError("its plan covers none of this model's modules")
    params: dict[str, object] = {}
    mapped = 0
    for unit in bound.units:
        wanted = _unit_values(_majority([plan.config_for(m) for m in unit.modules]))

        def ask(name, domain, wanted=wanted):
            nonlocal mapped
            key = name.rsplit("/", 1)[1]
            value = _nearest(domain, wanted.get(key))
            if key in wanted and not _same(value, wanted[key]):
                mapped += 1
            params[name] = value
            return value

        bound._sample_unit(unit, ask)
    return params, mapped


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(float(a) - float(b)) < 1e-9
    return a == b


def front_params(name: str, storage_url: str, bound, notes: list[str]) -> list[tuple[dict, dict]]:
    """Parameters for this space from the Pareto front of study ``name`` (notes say what moved)."""
    from presso.plan import plan_from_dict
    from presso.search._driver import load_existing_study
    from presso.search._records import pareto_rows

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

@dataclass
class _UnitChoice:
    params: dict
    config: object  # LayerConfig
    size: int = 0  # stored bytes of the unit's weights
    error: float = 0.0  # relative activation-weighted squared error (prune_error + quant_error)
    prune_error: float = 0.0
    quant_error: float = 0.0


def unit_choices(unit) -> list[_UnitChoice]:
    """Every distinct choice a unit can take (the grid of each free domain, conditionals kept)."""
    from presso.spaces import Fixed
    from presso.spaces._space import CHOICE_KEYS, BoundSpace, _nearest

    group = unit.group
    free = [k for k in CHOICE_KEYS if not isinstance(getattr(group, k), Fixed)]
    out, seen = [], set()
    for combo in itertools.product(*(getattr(group, k).grid() for k in free)):
        wanted = dict(zip(free, combo))
        params: dict = {}

        def ask(name, domain, wanted=wanted, params=params):
            value = _nearest(domain, wanted.get(name.rsplit("/", 1)[1]))
            params[name] = value
            return value

        config = BoundSpace._sample_unit(unit, ask)
        signature = tuple(sorted(params.items()))
        if signature not in seen:
            seen.add(signature)
            out.append(_UnitChoice(params, config))
    return out


def _stored_bytes(config, shape, dtype, criterion) -> int:
    """Bytes the compressed weight takes as stored (the same layout ``save_compressed`` writes)."""
    import torch

    from presso.compress._compress import CompressedModule
    from presso.compress._size import module_specs
    from presso.plan import PruneCriterion

    out_f, in_f = shape
    numel = out_f * in_f
    kept, mask = numel, None
    if config.sparsity.active:
        mask = torch.empty(0)
        if config.sparsity.n_m is not None:
            n, m = config.sparsity.n_m
            kept = numel // m * n
        elif criterion is PruneCriterion.WANDA:
            kept = out_f * (in_f - round(config.sparsity.amount * in_f))
        else:
            kept = numel - round(config.sparsity.amount * numel)
    q = config.quant
    rec = CompressedModule(name="w", config=config, shape=shape, dtype=dtype, bits=q.bits if q.active else None,
                           group_size=q.group_size, symmetric=q.symmetric, mask=mask, n_kept=kept, method=q.method)
    return sum(spec.nbytes for _, spec in module_specs(rec, "w"))


def _weighted_errors(unit, choices, modules, stats, criterion) -> None:
    """Fill each choice's relative activation-weighted error (pruning + quantization, added)."""
    import torch

    from presso.compress._prune import mask_from_ranks, prune_mask
    from presso.compress.quantizers import get_quantizer
    from presso.plan import PruneCriterion

    sparsities = {(c.config.sparsity.amount, c.config.sparsity.structure): c.config.sparsity for c in choices}
    quants = {c.config.quant: c.config.quant for c in choices}
    prune_err = dict.fromkeys(sparsities, 0.0)
    quant_err = dict.fromkeys(quants, 0.0)
    total = 0.0
    with torch.no_grad():
        for name in unit.modules:
            w = modules[name].weight.detach().to(torch.float32)
            # An embedding table has no input activations: its rows count equally.
            norms = stats.sq_norms[name].to(w.device, torch.float32).unsqueeze(0) if name in stats.sq_norms \
                else torch.ones(1, w.shape[1], device=w.device)
            w2n = w.pow(2).mul_(norms)
            total += float(w2n.sum())
            wanda = criterion is PruneCriterion.WANDA
            for key, sp in sparsities.items():
                if not sp.active:
                    continue
                ranks = stats.row_ranks(name, modules[name].weight) if wanda and sp.n_m is None else None
                if ranks is not None:
                    keep = mask_from_ranks(ranks, sp.amount)[0]
                else:
                    keep = prune_mask(w, sp.amount, sp.n_m, stats.sq_norms[name] if wanda else None)
                prune_err[key] += float(w2n[~keep].sum())
            for key, q in quants.items():
                if not q.active or (q.group_size and w.shape[1] % q.group_size):
                    continue
                layer = stats.layer_stats(name) if name in stats.sq_norms else None  # the compress_ handler
                diff = get_quantizer(q.method).quantize(w, q, layer).dequantize().sub_(w)
                quant_err[key] += float(diff.pow_(2).mul_(norms).sum())
    total = max(total, 1e-30)
    for c in choices:
        sp, q = c.config.sparsity, c.config.quant
        c.prune_error = prune_err[(sp.amount, sp.structure)] / total
        c.quant_error = (1.0 - sp.amount) * quant_err[q] / total
        c.error = c.prune_error + c.quant_error


def _probes(choices) -> dict[str, _UnitChoice | None]:
    """The unit's hardest pruning alone and its coarsest quantization alone (None when the
    space offers no pruning, or no quantization, for the unit)."""
    from presso.plan import LayerConfig, SparsityConfig

    pruned = [c.config.sparsity for c in choices if c.config.sparsity.active]
    quantized = [c.config.quant for c in choices if c.config.quant.active]
    out: dict[str, _UnitChoice | None] = {"prune": None, "quant": None}
    if pruned:
        sp = max(pruned, key=lambda x: x.amount)
        out["prune"] = _UnitChoice({}, LayerConfig(sparsity=SparsityConfig(amount=sp.amount, structure=sp.structure)))
    if quantized:
        q = min(quantized, key=lambda x: (x.bits, -(x.group_size or 1 << 30)))
        out["quant"] = _UnitChoice({}, LayerConfig(quant=q))
    return out


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
    from presso.compress import target_modules

    bound = evaluator.bound
    spec = _quality_objective(evaluator)
    base_plan = bound.space.base_plan({}, model=evaluator.config.model)
    criterion = base_plan.criterion
    modules = target_modules(evaluator.loaded.model)
    stats = evaluator.assets.calibration(base_plan.calibration_samples, base_plan.calibration_seq_len)
    units = list(bound.units)
    per_unit = []
    for unit in units:
        choices = unit_choices(unit)
        for c in choices:
            c.size = sum(_stored_bytes(c.config, tuple(modules[m].weight.shape), modules[m].weight.dtype, criterion)
                         for m in unit.modules)
        _weighted_errors(unit, choices, modules, stats, criterion)
        per_unit.append(choices)
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
        _weighted_errors(unit, [p for p in probes.values() if p is not None], modules, stats, criterion)
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

    fixed = _fixed_bytes(evaluator.loaded.model, {m: modules[m] for unit in units for m in unit.modules})
    dense = _dense_bytes(evaluator.loaded.model)
    plans = []
    for anchor, picks in _allocate_near_uniform(bound, per_unit, damages, count):
        params: dict = {}
        for choices, index in zip(per_unit, picks):
            params.update(choices[index].params)
        size = (fixed + sum(ch[i].size for ch, i in zip(per_unit, picks))) / dense
        predicted = sum(d[i] for d, i in zip(damages, picks))
        plans.append((params, {"predicted_size_fraction": round(size, 5), "predicted_loss": round(predicted, 6),
                               "anchor": anchor}))
    return plans, {k: round(v, 6) for k, v in sensitivity.items()}


def _allocate_near_uniform(bound, per_unit, damages, count: int):
    """For ``count`` uniform plans spread over the sizes where compression costs something, the
    least-damage plan of at most the same size whose units stay near the uniform choice (each
    unit's size within ``_NEAR`` of the uniform choice's). Like OWL's ``S +- lambda``: a local,
    sensitivity-driven reshuffle of a recipe, where the additive damage model is trustworthy;
    unrestricted allocations drift to extremes the model mispredicts (measured on SmolLM2).

    Also, at ``count`` sizes spread over the same range, the least-damage plan in which every
    group is uniform but groups differ (see :func:`_per_group`).

    Returns ``[(anchor description, [choice index per unit]), ...]``, smallest first.
    """
    combos = bound.uniform_choices()
    anchors = []
    for combo in combos:
        params = bound.params_for(combo)
        picks = []
        for unit, choices in zip(bound.units, per_unit):
            mine = {k: v for k, v in params.items() if k.startswith(unit.param(""))}
            picks.append(next((i for i, c in enumerate(choices) if c.params == mine), None))
        if None in picks:
            continue
        size = sum(ch[i].size for ch, i in zip(per_unit, picks))
        damage = sum(d[i] for d, i in zip(damages, picks))
        anchors.append((size, damage, combo, picks))
    if not anchors:
        return []
    every_uniform = list(anchors)  # the per-group options, "free" recipes included
    worst = max(a[1] for a in anchors)
    anchors = sorted((a for a in anchors if a[1] > _FLAT * worst), key=lambda a: a[0])
    # drop anchors another anchor beats (smaller or equal size, less predicted damage)
    kept = [a for a in anchors if not any(b[0] <= a[0] and b[1] < a[1] for b in anchors)]
    if not kept:
        return []
    chosen = [kept[round(i * (len(kept) - 1) / max(count - 1, 1))] for i in range(min(count, len(kept)))]
    candidates = []
    for size, _, combo, picks in chosen:
        label = ", ".join(f"{k}={v}" for k, v in combo.items() if k in ("sparsity", "bits", "group_size"))
        allowed = [[abs(c.size - ch[i].size) <= _NEAR * ch[i].size for c in ch] for ch, i in zip(per_unit, picks)]
        masked = [[d if ok else float("inf") for d, ok in zip(dmg, ok_row)] for dmg, ok_row in zip(damages, allowed)]
        candidates.append((size, f"uniform {label}", _least_damage(per_unit, masked, size)))
    # Per-group plans at sizes spread evenly over the range where compression costs something
    # (from the smallest anchor to the smallest "free" recipe), not only at the recipes' sizes:
    # the best mixes (a table at 8 bits, blocks at 4) often lie between two recipes.
    free = [a[0] for a in every_uniform if a[1] <= _FLAT * worst]
    low, high = kept[0][0], min(free) if free else kept[-1][0]
    options = _group_options(bound, per_unit, damages, every_uniform)
    for i in range(count):
        budget = int(low + (high - low) * (i + 1) / (count + 1))
        candidates.append((budget, f"per-group, at most {budget} bytes", _per_group(options, budget, len(per_unit))))
    out, seen = [], set()
    for _, name, best in sorted(candidates, key=lambda c: c[0]):
        key = tuple(best)
        if best and key not in seen:
            seen.add(key)
            out.append((name, best))
    return out


class _Option:
    def __init__(self, size: int, picks: dict[int, int]):
        self.size, self.picks = size, picks


def _group_options(bound, per_unit, damages, anchors) -> tuple[list[list[_Option]], list[list[float]]]:
    """Per group of the space, its distinct uniform choices (from the uniform ``anchors``) with
    their size and predicted damage: what :func:`_per_group` allocates between."""
    options: list[list[_Option]] = []
    option_damages: list[list[float]] = []
    for group in bound.space.groups:
        members = [i for i, unit in enumerate(bound.units) if unit.group is group]
        opts, dmgs, seen = [], [], set()
        for _, _, _, picks in anchors:
            mine = {i: picks[i] for i in members}
            key = tuple(sorted(mine.items()))
            if key in seen:
                continue
            seen.add(key)
            opts.append(_Option(sum(per_unit[i][j].size for i, j in mine.items()), mine))
            dmgs.append(sum(damages[i][j] for i, j in mine.items()))
        if opts:
            options.append(opts)
            option_damages.append(dmgs)
    return options, option_damages


def _per_group(options, budget: int, n_units: int) -> list[int]:
    """The least-damage plan of at most ``budget`` bytes in which every group of the space is
    uniform but groups differ (e.g. the embedding at 8 bits, the blocks at 4). Coarser than a
    per-unit allocation, so the additive damage model errs less; and free of the near-uniform
    limit, which would keep a large table (an embedding) from moving away from the recipe."""
    group_options, group_damages = options
    chosen = _least_damage(group_options, group_damages, budget)
    if not chosen:
        return []
    picks: dict[int, int] = {}
    for opts, index in zip(group_options, chosen):
        picks.update(opts[index].picks)
    return [picks[i] for i in range(n_units)] if len(picks) == n_units else []


def _least_damage(per_unit, damages, budget: int) -> list[int]:
    """Choice per unit with the least total damage and total size <= ``budget`` (exact DP over
    sizes rounded up to ``_DP_BINS`` steps; the result is checked against the true sizes)."""
    picks = _least_damage_binned(per_unit, damages, budget)
    over = sum(ch[i].size for ch, i in zip(per_unit, picks)) - budget if picks else 0
    if over > 0:  # rounding let it through: once more with the overshoot taken off
        picks = _least_damage_binned(per_unit, damages, budget - over)
        if picks and sum(ch[i].size for ch, i in zip(per_unit, picks)) > budget:
            return []
    return picks


def _least_damage_binned(per_unit, damages, budget: int) -> list[int]:
    import numpy as np

    lows = [min(c.size for c in ch) for ch in per_unit]
    span = budget - sum(lows)
    if span < 0:
        return []
    # NOTE: each unit's size rounds up by less than one bin, so the budget gets one spare bin
    # per unit; otherwise a plan of exactly the budget (the anchor itself) would not fit.
    step = max(span, 1) / max(_DP_BINS - len(per_unit), 1)
    best = np.full(_DP_BINS + 1, np.inf)
    best[0] = 0.0
    picks = []
    shifts = []
    for choices, damage, low in zip(per_unit, damages, lows):
        new = np.full(_DP_BINS + 1, np.inf)
        pick = np.full(_DP_BINS + 1, -1, dtype=np.int64)
        unit_shifts = []
        for index, (choice, dmg) in enumerate(zip(choices, damage)):
            shift = int(np.ceil((choice.size - low) / step - 1e-9))
            unit_shifts.append(shift)
            if not np.isfinite(dmg) or shift > _DP_BINS:
                continue
            candidate = np.full(_DP_BINS + 1, np.inf)
            candidate[shift:] = best[: _DP_BINS + 1 - shift] + dmg
            better = candidate < new
            new[better] = candidate[better]
            pick[better] = index
        best = new
        picks.append(pick)
        shifts.append(unit_shifts)
    if not np.isfinite(best).any():
        return []
    b = int(np.argmin(best))
    indices = []
    for unit in range(len(per_unit) - 1, -1, -1):
        index = int(picks[unit][b])
        indices.append(index)
        b -= shifts[unit][index]
    return indices[::-1]


def _fixed_bytes(model, modules) -> int:
    """Bytes of everything but the weights of ``modules`` (the ones the space compresses)."""
    own = {id(m.weight) for m in modules.values()}
    return _dense_bytes(model) - sum(m.weight.numel() * m.weight.element_size() for m in modules.values()
                                     if id(m.weight) in own)


def _dense_bytes(model) -> int:
    from presso.compress._size import unique_state

    unique, _ = unique_state(model)
    return sum(t.numel() * t.element_size() for k, t in unique.items() if ".lora_" not in k)
