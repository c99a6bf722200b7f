"""A GGUF file run by llama.cpp (llama-cpp-python), called like a transformers causal LM.

Presso's objectives call ``model(input_ids=..., attention_mask=...)`` and read ``.logits``;
this wrapper gives them llama.cpp's logits for the same token windows, so ``presso evaluate
model.gguf`` scores the runtime's own computation with the same code as a trial.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from presso.errors import PressoError


@dataclass
class _Output:
    logits: torch.Tensor


class LlamaCppCausalLM:
    """``LlamaCppCausalLM(path)(input_ids=ids, attention_mask=mask).logits`` from llama.cpp.

    Args:
        path: the ``.gguf`` file.
        n_ctx: context length to allocate (at least the longest window evaluated).
        n_threads: CPU threads (default: ``OMP_NUM_THREADS`` or all cores).
        n_gpu_layers: layers to offload when llama.cpp was built with a GPU backend.
    """

    def __init__(self, path: Path, *, n_ctx: int = 512, n_threads: int | None = None, n_gpu_layers: int = 0):
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise PressoError(f"llama-cpp-python is not importable ({exc}); it is a required dependency of presso") from None
        if not Path(path).is_file():
            raise PressoError(f"gguf: {str(path)!r} is not a file")
        threads = n_threads or int(os.environ.get("OMP_NUM_THREADS", 0) or 0) or os.cpu_count() or 1
        self.path = Path(path)
        self.n_ctx = n_ctx
        self._llama = Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True,
                            n_threads=threads, n_threads_batch=threads, n_gpu_layers=n_gpu_layers, verbose=False)
        self.n_vocab = self._llama.n_vocab()

    def eval(self):  # transformers-style no-ops the objectives may call
        return self

    def parameters(self):
        return iter(())

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_) -> _Output:
        rows, width = input_ids.shape
        if width > self.n_ctx:
            raise PressoError(f"gguf: a window of {width} tokens exceeds n_ctx={self.n_ctx}")
        logits = torch.zeros(rows, width, self.n_vocab, dtype=torch.float32)
        for r in range(rows):
            n = width if attention_mask is None else int(attention_mask[r].sum())
            tokens = input_ids[r, :n].tolist()  # windows are right-padded; padded positions are masked out
            self._llama.reset()
            self._llama.eval(tokens)
            logits[r, :n] = torch.from_numpy(np.array(self._llama.scores[:n], dtype=np.float32))
        return _Output(logits=logits)

    def tokens_per_second(self, tokens: list[int], decode_steps: int = 16) -> dict[str, float]:
        """Prompt processing and decode speed on this file (tokens/s), measured in llama.cpp."""
        llama = self._llama
        llama.reset()
        started = time.perf_counter()
        llama.eval(tokens)
        prompt_s = time.perf_counter() - started
        started = time.perf_counter()
        for _ in range(decode_steps):
            llama.eval([int(np.argmax(llama.scores[llama.n_tokens - 1]))])
        decode_s = time.perf_counter() - started
        return {"prompt_tokens_per_s": len(tokens) / prompt_s, "decode_tokens_per_s": decode_steps / decode_s}
