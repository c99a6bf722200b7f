"""``latency_ms``: median wall time of one forward pass of a fixed batch."""

from __future__ import annotations

import statistics
import time
from typing import Any

from presso.errors import PressoError
from presso.objectives._base import BaseObjective, Direction, EvalContext, TrialContext
from presso.objectives._registry import register_objective


def _check_count(field: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PressoError(f"latency_ms.{field}: got {value!r}; allowed: an integer >= {minimum}")


@register_objective
class LatencyObjective(BaseObjective):
    """Median milliseconds of a forward pass over the first ``batch_size`` evaluation rows.

    The batch is moved to ``ctx.device`` once per worker, so transfers are not timed. Each
    trial runs ``warmup`` untimed passes, then ``repeats`` timed ones; on CUDA every pass is
    bracketed by ``torch.cuda.synchronize``. The median resists outliers from other work on
    the machine. Note that fake-quantized weights (dequantized in the model's dtype) run at
    dense speed: this measures what the model as built costs, not a packed-kernel deployment.

    Args:
        batch_size: rows per timed pass; ``None`` uses ``ctx.batch_size``.
        warmup: untimed passes before timing.
        repeats: timed passes; the median is returned.
    """

    name = "latency_ms"
    direction = Direction.MINIMIZE
    unit = "ms"

    def __init__(self, batch_size: int | None = None, warmup: int = 2, repeats: int = 7):
        if batch_size is not None:
            _check_count("batch_size", batch_size, 1)
        _check_count("warmup", warmup, 0)
        _check_count("repeats", repeats, 1)
        self.batch_size, self.warmup, self.repeats = batch_size, warmup, repeats

    def _batch(self, ctx: EvalContext) -> tuple[Any, Any]:
        size = self.batch_size or ctx.batch_size
        key = f"latency/batch/{size}"
        if key not in ctx.cache:
            ctx.cache[key] = (ctx.input_ids[:size].to(ctx.device), ctx.attention_mask[:size].to(ctx.device))
        return ctx.cache[key]

    def prepare(self, ctx: EvalContext) -> None:
        self._batch(ctx)

    def compute(self, model: Any, ctx: EvalContext, trial: TrialContext) -> float:
        import torch

        ids, mask = self._batch(ctx)
        device = torch.device(ctx.device)
        sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
        for _ in range(self.warmup):
            model(input_ids=ids, attention_mask=mask)
        sync()
        times = []
        for _ in range(self.repeats):
            start = time.perf_counter()
            model(input_ids=ids, attention_mask=mask)
            sync()
            times.append((time.perf_counter() - start) * 1000.0)
        return statistics.median(times)
