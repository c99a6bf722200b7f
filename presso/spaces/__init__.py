"""Declared search spaces (data only: stdlib and PyYAML, never torch or a sampler).

A YAML file names groups of modules by pattern and, per group, the choices; binding a space
to a model's module names gives units of modules that share choices; ``BoundSpace.sample``
turns answers to ``ask(name, domain)`` into a :class:`presso.plan.Plan`, and
:func:`plan_to_params` maps a stored plan back onto a bound space's parameters.
"""

from presso.spaces._builtin import builtin_space_path, builtin_spaces
from presso.spaces._domains import Choice, Domain, FloatRange, Fixed, IntRange, nearest_value
from presso.spaces._mapping import plan_to_params, unit_choices
from presso.spaces._space import CHOICE_KEYS, TIES, BoundSpace, Group, SearchSpace, Unit, load_space, module_group

__all__ = [
    "CHOICE_KEYS",
    "TIES",
    "BoundSpace",
    "Choice",
    "Domain",
    "FloatRange",
    "Fixed",
    "Group",
    "IntRange",
    "SearchSpace",
    "Unit",
    "builtin_space_path",
    "builtin_spaces",
    "load_space",
    "module_group",
    "nearest_value",
    "plan_to_params",
    "unit_choices",
]
