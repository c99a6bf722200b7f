"""``vllm_decode_ms``: milliseconds per decoded token of the trial's compressed-tensors folder in vLLM.

The trial's model is written as the ``compressed-tensors`` target's folder (into a temporary
directory) and served by vLLM's offline engine (``vllm.LLM``, the engine behind ``vllm serve``)
on the worker's GPU, in fp16 (vLLM's WNA16 kernels run fp16/bf16 activations). Timed: a prompt of
``prompt_tokens`` evaluation tokens, then ``decode_tokens`` greedy tokens; the decode time is the
full generation's minus a one-token generation's, median over ``repeats``. Every trial starts an
engine, which costs tens of seconds: use it as a second-stage objective on few trials.

Offered only where it can run: ``prepare`` (once per worker, on the worker) refuses with a clear
message when vLLM is not installed or the worker has no CUDA GPU. Not run in Presso's CI (no GPU
there); ``benchmarks/gpu_check.py --vllm`` exercises the same path on a GPU host.
"""

from __future__ import annotations

import importlib.util
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from presso.errors import PressoError
from presso.objectives._base import BaseObjective, Direction, EvalContext, Task, TrialContext
from presso.objectives._kernel_latency import COMPRESSION_KEY
from presso.objectives._registry import register_objective


def vllm_unavailable() -> str | None:
    """Why vLLM cannot run here, or ``None`` when it can."""
    import torch

    missing = []
    if importlib.util.find_spec("vllm") is None:
        missing.append("vllm is not installed (pip install vllm)")
    if not torch.cuda.is_available():
        missing.append("no CUDA GPU is visible to this worker")
    return "; ".join(missing) or None


@register_objective
class VllmDecodeObjective(BaseObjective):
    """Median ms per decoded token in vLLM (study target ``compressed-tensors``, CUDA workers)."""

    name = "vllm_decode_ms"
    direction = Direction.MINIMIZE
    unit = "ms"
    tasks = (Task.CAUSAL_LM,)

    def __init__(self, prompt_tokens: int = 64, decode_tokens: int = 32, repeats: int = 3,
                 gpu_memory_utilization: float = 0.3):
        for field, value in (("prompt_tokens", prompt_tokens), ("decode_tokens", decode_tokens), ("repeats", repeats)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PressoError(f"vllm_decode_ms.{field}: got {value!r}; allowed: an integer >= 1")
        if not 0.0 < float(gpu_memory_utilization) <= 1.0:
            raise PressoError(f"vllm_decode_ms.gpu_memory_utilization: got {gpu_memory_utilization!r}; allowed: (0, 1]")
        self.prompt_tokens, self.decode_tokens, self.repeats = prompt_tokens, decode_tokens, repeats
        self.gpu_memory_utilization = float(gpu_memory_utilization)

    def prepare(self, ctx: EvalContext) -> None:
        reason = vllm_unavailable()
        if reason is not None:
            raise PressoError(f"objective 'vllm_decode_ms': not offered on this worker: {reason}; allowed here: "
                              "latency_ms (torch), or llama_decode_ms with target: gguf")

    def compute(self, model: Any, ctx: EvalContext, trial: TrialContext) -> float:
        from presso.targets import get_target

        result = trial.cache.get(COMPRESSION_KEY)
        if result is None:
            raise PressoError("objective 'vllm_decode_ms': no compression result for this trial; it is measured "
                              "on the trial's compressed-tensors folder (study target: compressed-tensors)")
        target = get_target("compressed-tensors")
        prompt = ctx.input_ids[0, : self.prompt_tokens].tolist()
        with tempfile.TemporaryDirectory(prefix="presso-vllm-") as tmp:
            folder = target.write(model, result, ctx.tokenizer, Path(tmp) / "trial").path
            decode_s = time_decode(folder, prompt, self.decode_tokens, self.repeats, self.gpu_memory_utilization)
        return 1000.0 * decode_s / self.decode_tokens


def time_decode(folder: Path, prompt: list[int], decode_tokens: int, repeats: int, memory: float) -> float:
    """Median seconds for ``decode_tokens`` greedy tokens after ``prompt``, prefill excluded."""
    import gc

    import torch
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    # Token ids in, token ids out: no tokenizer needed (the folder may have none).
    llm = LLM(model=str(folder), dtype="float16", gpu_memory_utilization=memory, enforce_eager=True,
              max_model_len=len(prompt) + decode_tokens + 8, skip_tokenizer_init=True)
    try:
        request = [TokensPrompt(prompt_token_ids=prompt)]

        def generate(tokens: int) -> float:
            started = time.perf_counter()
            llm.generate(request, SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True), use_tqdm=False)
            return time.perf_counter() - started

        generate(decode_tokens)  # warm-up (CUDA kernels, allocator)
        return statistics.median(generate(decode_tokens) - generate(1) for _ in range(repeats))
    finally:
        del llm
        gc.collect()
        torch.cuda.empty_cache()
