"""The quantizer registry: ``quant.method`` name -> handler (one module per method)."""

from __future__ import annotations

from presso.compress.quantizers._base import ZERO_KINDS, Quantizer
from presso.errors import PressoError
from presso.plan import register_quant_method

_REGISTRY: dict[str, Quantizer] = {}


def register_quantizer(cls: type[Quantizer]) -> type[Quantizer]:
    """Class decorator: register a :class:`Quantizer` under its ``name`` (duplicates rejected).

    The name and ``cls.needs`` are declared to the plan's torch-free name registry
    (:func:`presso.plan.register_quant_method`), so plans accept the method from then on.
    """
    name = cls.name
    if name in _REGISTRY:
        raise PressoError(f"quantizer {name!r} is already registered ({type(_REGISTRY[name]).__name__})")
    if cls.zero_kind not in ZERO_KINDS:
        raise PressoError(f"quantizer {name!r}: zero_kind {cls.zero_kind!r}; allowed: {list(ZERO_KINDS)}")
    register_quant_method(name, cls.needs)
    _REGISTRY[name] = cls()
    return cls


def get_quantizer(name: str) -> Quantizer:
    """The registered handler for ``quant.method`` ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise PressoError(f"quant.method: got {name!r}; allowed: {sorted(_REGISTRY)}") from None


def registered_quantizers() -> dict[str, Quantizer]:
    """``{name: handler}`` of every registered method (a copy)."""
    return dict(_REGISTRY)
