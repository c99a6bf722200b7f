"""Size objectives, read from the compression engine's size report in ``TrialContext``."""

from __future__ import annotations

from typing import Any

from presso.errors import PressoError
from presso.objectives._base import BaseObjective, Direction, EvalContext, TrialContext
from presso.objectives._registry import register_objective


def _require(trial: TrialContext, field: str, objective: str) -> int:
    value = getattr(trial, field)
    if value is None:
        raise PressoError(
            f"objective {objective!r}: TrialContext.{field} is None; the compression engine's size report must fill it"
        )
    return value


@register_objective
class SizeBytesObjective(BaseObjective):
    """Bytes the compressed weights take as stored (packed low-bit weights, sparse formats)."""

    name = "size_bytes"
    direction = Direction.MINIMIZE
    unit = "bytes"
    needs_model = False

    def compute(self, model: Any, ctx: EvalContext, trial: TrialContext) -> float:
        return float(_require(trial, "size_bytes", self.name))


@register_objective
class SizeFractionObjective(BaseObjective):
    """Compressed size over dense size (0.25 = a quarter of the dense bytes)."""

    name = "size_fraction"
    direction = Direction.MINIMIZE
    unit = "fraction"
    needs_model = False

    def compute(self, model: Any, ctx: EvalContext, trial: TrialContext) -> float:
        return _require(trial, "size_bytes", self.name) / _require(trial, "dense_bytes", self.name)
