"""Plans and choices as a bound space's parameters: a stored plan mapped onto a space unit by
unit (warm starts from an earlier study), and every distinct choice a unit can take."""

from __future__ import annotations

import itertools

from presso.errors import PressoError
from presso.plan import KEEP_BITS, LayerConfig, Plan
from presso.spaces._domains import Fixed, nearest_value
from presso.spaces._space import CHOICE_KEYS, BoundSpace, Unit


def _majority(configs: list):
    counts: dict[str, list] = {}
    for cfg in configs:
        counts.setdefault(repr(cfg), []).append(cfg)
    return max(counts.values(), key=len)[0]


def _unit_values(cfg) -> dict[str, object]:
    """The space keys a layer config corresponds to (``None``: the module was left as is)."""
    if cfg is None:
        return {"sparsity": 0.0, "structure": "unstructured", "bits": KEEP_BITS, "rank": 0}
    return {"sparsity": cfg.sparsity.amount, "structure": cfg.sparsity.structure, "bits": cfg.quant.bits,
            "group_size": cfg.quant.group_size, "symmetric": cfg.quant.symmetric, "method": cfg.quant.method,
            "format": cfg.quant.format,
            "rank": cfg.adapter.rank}


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(float(a) - float(b)) < 1e-9
    return a == b


def plan_to_params(plan: Plan, bound: BoundSpace) -> tuple[dict, int]:
    """Map ``plan`` onto ``bound``'s parameters, unit by unit.

    A unit takes the config most of its modules have in ``plan``; a value outside a domain goes
    to the nearest allowed choice (:func:`nearest_value`).

    Returns:
        ``(params, mapped)``: the parameters, and how many values had to move to the nearest
        allowed choice (0 when the plan fits the space exactly).

    Raises:
        PressoError: the plan covers none of the space's modules (another model).

    Example::

        params, mapped = plan_to_params(load_plan("best.yaml"), space.bind(module_names))
    """
    if not any(plan.config_for(m) is not None for unit in bound.units for m in unit.modules):
        raise PressoError("its plan covers none of this model's modules")
    params: dict[str, object] = {}
    mapped = 0
    for unit in bound.units:
        wanted = _unit_values(_majority([plan.config_for(m) for m in unit.modules]))

        def ask(name, domain, wanted=wanted):
            nonlocal mapped
            key = name.rsplit("/", 1)[1]
            value = nearest_value(domain, wanted.get(key))
            if key in wanted and not _same(value, wanted[key]):
                mapped += 1
            params[name] = value
            return value

        BoundSpace._sample_unit(unit, ask)
    return params, mapped


def unit_choices(unit: Unit) -> list[tuple[dict, LayerConfig]]:
    """Every distinct choice ``unit`` can take, as ``(params, layer config)``: the grid of each
    free domain, conditional parameters kept (a rank only with an adapter)."""
    group = unit.group
    free = [k for k in CHOICE_KEYS if not isinstance(getattr(group, k), Fixed)]
    out, seen = [], set()
    for combo in itertools.product(*(getattr(group, k).grid() for k in free)):
        wanted = dict(zip(free, combo))
        params: dict = {}

        def ask(name, domain, wanted=wanted, params=params):
            value = nearest_value(domain, wanted.get(name.rsplit("/", 1)[1]))
            params[name] = value
            return value

        config = BoundSpace._sample_unit(unit, ask)
        signature = tuple(sorted(params.items()))
        if signature not in seen:
            seen.add(signature)
            out.append((params, config))
    return out
