"""Allocation maths of the sensitivity warm start: given every choice of every unit with its
stored size and predicted damage, the least-damage plans of a given size (exact dynamic
programming over sizes), near a uniform recipe or uniform per group."""

from __future__ import annotations

from dataclasses import dataclass

_DP_BINS = 2000
_FLAT = 0.02  # uniform plans whose predicted loss is under 2% of the worst one's are "free": no anchor
_NEAR = 0.3  # a unit's choice may differ in size from the uniform anchor's by at most 30%


@dataclass
class UnitChoice:
    """One choice of one unit, with what the allocation knows about it."""

    params: dict
    config: object  # LayerConfig
    size: int = 0  # stored bytes of the unit's weights
    error: float = 0.0  # relative activation-weighted squared error (prune_error + quant_error)
    prune_error: float = 0.0
    quant_error: float = 0.0


def choices_of(unit) -> list[UnitChoice]:
    """Every distinct choice ``unit`` can take (:func:`presso.spaces.unit_choices`), sizes and
    errors still to fill in."""
    from presso.spaces import unit_choices

    return [UnitChoice(params, config) for params, config in unit_choices(unit)]


def allocate_near_uniform(bound, per_unit, damages, count: int):
    """For ``count`` uniform plans spread over the sizes where compression costs something, the
    least-damage plan of at most the same size whose units stay near the uniform choice (each
    unit's size within ``_NEAR`` of the uniform choice's). Like OWL's ``S +- lambda``: a local,
    sensitivity-driven reshuffle of a recipe, where the additive damage model is trustworthy;
    unrestricted allocations drift to extremes the model mispredicts (measured on SmolLM2).

    Also, at ``count`` sizes spread over the same range, the least-damage plan in which every
    group is uniform but groups differ (see :func:`per_group`).

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
        keys = ("format", "method") if combo.get("format") else ("sparsity", "bits", "group_size")
        label = ", ".join(f"{k}={v}" for k, v in combo.items() if k in keys)
        allowed = [[abs(c.size - ch[i].size) <= _NEAR * ch[i].size for c in ch] for ch, i in zip(per_unit, picks)]
        masked = [[d if ok else float("inf") for d, ok in zip(dmg, ok_row)] for dmg, ok_row in zip(damages, allowed)]
        candidates.append((size, f"uniform {label}", least_damage(per_unit, masked, size)))
    # Per-group plans at sizes spread evenly over the range where compression costs something
    # (from the smallest anchor to the smallest "free" recipe), not only at the recipes' sizes:
    # the best mixes (a table at 8 bits, blocks at 4) often lie between two recipes.
    free = [a[0] for a in every_uniform if a[1] <= _FLAT * worst]
    low, high = kept[0][0], min(free) if free else kept[-1][0]
    options = group_options(bound, per_unit, damages, every_uniform)
    for i in range(count):
        budget = int(low + (high - low) * (i + 1) / (count + 1))
        candidates.append((budget, f"per-group, at most {budget} bytes", per_group(options, budget, len(per_unit))))
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


def group_options(bound, per_unit, damages, anchors) -> tuple[list[list[_Option]], list[list[float]]]:
    """Per group of the space, its distinct uniform choices (from the uniform ``anchors``) with
    their size and predicted damage: what :func:`per_group` allocates between."""
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


def per_group(options, budget: int, n_units: int) -> list[int]:
    """The least-damage plan of at most ``budget`` bytes in which every group of the space is
    uniform but groups differ (e.g. the embedding at 8 bits, the blocks at 4). Coarser than a
    per-unit allocation, so the additive damage model errs less; and free of the near-uniform
    limit, which would keep a large table (an embedding) from moving away from the recipe."""
    per_group_options, per_group_damages = options
    chosen = least_damage(per_group_options, per_group_damages, budget)
    if not chosen:
        return []
    picks: dict[int, int] = {}
    for opts, index in zip(per_group_options, chosen):
        picks.update(opts[index].picks)
    return [picks[i] for i in range(n_units)] if len(picks) == n_units else []


def least_damage(per_unit, damages, budget: int) -> list[int]:
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
