"""Compression plans: what to do to each module, as plain frozen dataclasses.

A plan is data only (no torch): ``presso.spaces`` produces plans, ``presso.compress``
applies them. Plans round-trip losslessly through :func:`plan_to_dict` /
:func:`plan_from_dict` and YAML/JSON files.
"""

from presso.plan._config import (
    BITS_ALLOWED,
    FORMAT_BITS,
    GPTQ_FORMATS,
    IMPORTANCE_FORMATS,
    KEEP_BITS,
    QUANT_NEEDS,
    AdapterConfig,
    LayerConfig,
    Plan,
    PruneCriterion,
    QuantConfig,
    RecoveryConfig,
    SparsityConfig,
    STORAGE_FORMATS,
    parse_structure,
    quant_methods,
    register_quant_method,
)
from presso.plan._serialize import (
    PLAN_VERSION,
    load_plan,
    plan_from_dict,
    plan_to_dict,
    plan_to_yaml,
    save_plan,
    section_from_dict,
)

__all__ = [
    "BITS_ALLOWED",
    "FORMAT_BITS",
    "GPTQ_FORMATS",
    "IMPORTANCE_FORMATS",
    "KEEP_BITS",
    "QUANT_NEEDS",
    "PLAN_VERSION",
    "STORAGE_FORMATS",
    "AdapterConfig",
    "LayerConfig",
    "Plan",
    "PruneCriterion",
    "QuantConfig",
    "RecoveryConfig",
    "SparsityConfig",
    "load_plan",
    "parse_structure",
    "quant_methods",
    "register_quant_method",
    "plan_from_dict",
    "plan_to_dict",
    "plan_to_yaml",
    "save_plan",
    "section_from_dict",
]
