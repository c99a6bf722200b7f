"""``llama_decode_ms``: milliseconds per decoded token of the trial's GGUF, measured in llama.cpp.

The trial's compressed model is written as the ``gguf`` target's file (into a temporary folder),
loaded by llama-cpp-python, and timed there: a prompt of ``prompt_tokens`` evaluation tokens,
then ``decode_tokens`` greedy single-token steps, on ``threads`` CPU threads (default: the
worker's torch threads). The median over ``repeats`` runs resists noise from other work on the
machine. This is the runtime's own speed for the trial's exact per-tensor types (each ggml type
runs its own kernel); on a GPU build of llama.cpp pass ``n_gpu_layers``. Prompt processing speed
is kept in the trial's ``llama_prompt_tok_s`` metric.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any

from presso.errors import PressoError
from presso.objectives._base import BaseObjective, Direction, EvalContext, Task, TrialContext
from presso.objectives._kernel_latency import COMPRESSION_KEY
from presso.objectives._registry import register_objective


@register_objective
class LlamaDecodeObjective(BaseObjective):
    """Median ms per decoded token in llama.cpp (study target ``gguf`` only)."""

    name = "llama_decode_ms"
    direction = Direction.MINIMIZE
    unit = "ms"
    tasks = (Task.CAUSAL_LM,)

    def __init__(self, prompt_tokens: int = 64, decode_tokens: int = 16, repeats: int = 3,
                 threads: int | None = None, n_gpu_layers: int = 0):
        for field, value in (("prompt_tokens", prompt_tokens), ("decode_tokens", decode_tokens), ("repeats", repeats)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PressoError(f"llama_decode_ms.{field}: got {value!r}; allowed: an integer >= 1")
        self.prompt_tokens, self.decode_tokens, self.repeats = prompt_tokens, decode_tokens, repeats
        self.threads, self.n_gpu_layers = threads, n_gpu_layers

    def compute(self, model: Any, ctx: EvalContext, trial: TrialContext) -> float:
        import torch

        from presso.targets import get_target

        result = trial.cache.get(COMPRESSION_KEY)
        if result is None:
            raise PressoError("objective 'llama_decode_ms': no compression result for this trial; it is measured "
                              "on the trial's GGUF file (study target: gguf)")
        if any(rec.format is None and rec.bits is not None for rec in result.modules.values()):
            raise PressoError("objective 'llama_decode_ms': the plan uses Presso's codes (bits/group_size); allowed: "
                              "a study with target: gguf (ggml formats), which llama.cpp runs")
        target = get_target("gguf")
        prompt = ctx.input_ids[0, : self.prompt_tokens].tolist()
        threads = self.threads or torch.get_num_threads()
        with tempfile.TemporaryDirectory(prefix="presso-latency-") as tmp:
            path = target.write(model, result, None, Path(tmp) / "trial.gguf").path
            runtime = target.load(path, n_ctx=len(prompt) + self.decode_tokens + 1, n_threads=threads,
                                  n_gpu_layers=self.n_gpu_layers)
            runs = [runtime.tokens_per_second(prompt, self.decode_tokens) for _ in range(self.repeats)]
            del runtime
        trial.cache["llama_prompt_tok_s"] = statistics.median(r["prompt_tokens_per_s"] for r in runs)
        return 1000.0 / statistics.median(r["decode_tokens_per_s"] for r in runs)
