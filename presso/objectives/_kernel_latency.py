"""``latency_kernel_ms``: latency with the compressed layers running packed-format kernels."""

from __future__ import annotations

import statistics
import time
from typing import Any

from presso.errors import PressoError
from presso.objectives._base import BaseObjective, Direction, EvalContext, Task, TrialContext
from presso.objectives._registry import register_objective

COMPRESSION_KEY = "compression/result"
"""``TrialContext.cache[COMPRESSION_KEY]``: the trial's ``CompressionResult`` (set by the evaluator)."""


def _check_count(field: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PressoError(f"latency_kernel_ms.{field}: got {value!r}; allowed: an integer >= {minimum}")


@register_objective
class KernelLatencyObjective(BaseObjective):
    """Median milliseconds of one decode step with the compressed layers on real kernels.

    Causal LMs: one new token at batch 1 after a ``context``-token prompt (KV cache cropped
    back after each step, so every step sees the same context); encoders: one forward of
    ``context`` tokens at batch 1. During timing each compressed Linear runs the kernel made
    for its format (``presso.compress._kernels``: int4 packed matmul for 2-4 bits, weight-only
    int8 for 5-8 bits, 2:4 semi-structured on CUDA) and falls back to dense otherwise; the
    kernels used are in ``last_report``. Without a compression result in the trial (the dense
    model) every layer runs dense, which gives the baseline. Weight-only kernels pay off at
    small batches (decode); at prompt-sized batches they can be slower than dense fp32.

    Args:
        context: prompt tokens before the timed step (taken from the first evaluation row).
        warmup: untimed steps.
        repeats: timed steps; the median is returned.
    """

    name = "latency_kernel_ms"
    direction = Direction.MINIMIZE
    unit = "ms"
    tasks = (Task.CAUSAL_LM, Task.ENCODER)

    def __init__(self, context: int = 32, warmup: int = 2, repeats: int = 9):
        _check_count("context", context, 1)
        _check_count("warmup", warmup, 0)
        _check_count("repeats", repeats, 1)
        self.context, self.warmup, self.repeats = context, warmup, repeats
        self.last_report = None

    def prepare(self, ctx: EvalContext) -> None:
        key = f"latency_kernel/ids/{self.context}"
        if key not in ctx.cache:
            ctx.cache[key] = ctx.input_ids[:1, : self.context].to(ctx.device)

    def compute(self, model: Any, ctx: EvalContext, trial: TrialContext) -> float:
        import torch

        from presso.compress import kernel_view

        self.prepare(ctx)
        ids = ctx.cache[f"latency_kernel/ids/{self.context}"]
        device = torch.device(ctx.device)
        sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
        causal = Task(ctx.task) is Task.CAUSAL_LM
        times = []
        with kernel_view(model, trial.cache.get(COMPRESSION_KEY)) as report:
            self.last_report = report
            if causal:
                out = model(input_ids=ids, use_cache=True)
                # NOTE: transformers 5 names the KV cache ``cache``; 4.x named it ``past_key_values``.
                key = "cache" if out.get("cache") is not None else "past_key_values"
                cache = out[key]
                step = ids[:, -1:]
            for i in range(self.warmup + self.repeats):
                sync()
                start = time.perf_counter()
                if causal:
                    model(input_ids=step, use_cache=True, **{key: cache})
                else:
                    model(input_ids=ids)
                sync()
                if i >= self.warmup:
                    times.append((time.perf_counter() - start) * 1000.0)
                if causal:
                    cache.crop(-1)  # back to the prompt's length: every step sees the same context
        return statistics.median(times)
