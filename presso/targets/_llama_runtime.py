"""A GGUF file run by llama.cpp (llama-cpp-python), called like the transformers model it came from.

Presso's objectives call ``model(input_ids=..., attention_mask=...)``: a causal LM's ``.logits``
come from :class:`LlamaCppCausalLM`, an embedding model's mean-pooled embeddings from
:class:`LlamaCppEncoder` (llama.cpp's own MEAN pooling, ``Llama(..., embedding=True)``). Both are
fed the study's token ids, not text, so ``presso evaluate model.gguf`` scores the runtime's own
computation on exactly the tokens a trial saw; :func:`tokenization_mismatches` checks that
llama.cpp's tokenizer would have produced the same ids from the text.
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


@dataclass
class _PooledOutput:
    mean_pooled: torch.Tensor
    """``[rows, hidden]``: the mean of the last hidden states over each row's real tokens."""


def _llama_class():
    try:
        from llama_cpp import Llama
    except ImportError as exc:
        raise PressoError(f"llama-cpp-python is not importable ({exc}); it is a required dependency of presso") from None
    return Llama


def _threads(n_threads: int | None) -> int:
    return n_threads or int(os.environ.get("OMP_NUM_THREADS", 0) or 0) or os.cpu_count() or 1


def _fields(path: Path) -> dict:
    """The file's metadata keys and values (``general.architecture``, ``bert.context_length``, ...)."""
    import gguf

    if not Path(path).is_file():
        raise PressoError(f"gguf: {str(path)!r} is not a file")
    fields = gguf.GGUFReader(str(path)).fields
    if "general.architecture" not in fields:
        raise PressoError(f"gguf: {str(path)!r} has no general.architecture; allowed: a GGUF model file")
    return {name: field.contents() for name, field in fields.items() if not name.startswith("tokenizer.")}


def gguf_architecture(path: Path) -> str:
    """The file's ``general.architecture`` (``llama``, ``bert``, ...)."""
    return str(_fields(path)["general.architecture"])


class LlamaCppCausalLM:
    """``LlamaCppCausalLM(path)(input_ids=ids, attention_mask=mask).logits`` from llama.cpp.

    Args:
        path: the ``.gguf`` file.
        n_ctx: context length to allocate (at least the longest window evaluated).
        n_threads: CPU threads (default: ``OMP_NUM_THREADS`` or all cores).
        n_gpu_layers: layers to offload when llama.cpp was built with a GPU backend.
    """

    def __init__(self, path: Path, *, n_ctx: int = 512, n_threads: int | None = None, n_gpu_layers: int = 0):
        Llama = _llama_class()
        if not Path(path).is_file():
            raise PressoError(f"gguf: {str(path)!r} is not a file")
        threads = _threads(n_threads)
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


class LlamaCppEncoder:
    """``LlamaCppEncoder(path)(input_ids=ids, attention_mask=mask).mean_pooled`` from llama.cpp.

    Each row's real tokens (``attention_mask`` 1; rows are right-padded) go through llama.cpp as one
    sequence, and llama.cpp's MEAN pooling averages its last hidden states: the embedding
    :func:`presso.objectives._embedding.pooled_embeddings` takes from a transformers encoder.

    Args:
        path: the ``.gguf`` file of an embedding model (llama.cpp's ``bert`` architecture).
        n_ctx: the longest sequence that will be passed; at most the model's positions
            (``bert.context_length``: 512 for MiniLM). The context always holds all positions.
        n_threads: CPU threads (default: ``OMP_NUM_THREADS`` or all cores).
        n_gpu_layers: layers to offload when llama.cpp was built with a GPU backend.
    """

    def __init__(self, path: Path, *, n_ctx: int = 0, n_threads: int | None = None, n_gpu_layers: int = 0):
        import llama_cpp

        Llama = _llama_class()
        threads = _threads(n_threads)
        self.path = Path(path)
        fields = _fields(path)
        self.n_positions = int(fields[f"{fields['general.architecture']}.context_length"])
        if n_ctx > self.n_positions:
            raise PressoError(f"gguf: sequences of {n_ctx} tokens exceed the model's {self.n_positions} positions; "
                              f"allowed: eval.seq_len <= {self.n_positions}")
        # NOTE: non-causal attention needs a whole sequence in one micro-batch, so the context, the
        # batch and the micro-batch all hold every position of the model.
        positions = self.n_positions
        self._llama = Llama(model_path=str(path), embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                            n_ctx=positions, n_batch=positions, n_ubatch=positions, n_threads=threads,
                            n_threads_batch=threads, n_gpu_layers=n_gpu_layers, verbose=False)
        self.n_embd = self._llama.n_embd()

    def eval(self):  # transformers-style no-ops the objectives may call
        return self

    def parameters(self):
        return iter(())

    def embed_ids(self, tokens: list[int]) -> np.ndarray:
        """llama.cpp's mean-pooled embedding of one sequence of token ids, ``float32 [hidden]``."""
        import llama_cpp

        if not 0 < len(tokens) <= self.n_positions:
            raise PressoError(f"gguf: a sequence of {len(tokens)} tokens; allowed: 1 to {self.n_positions} "
                              "(the model's positions)")
        llama = self._llama
        llama._batch.reset()
        llama._batch.add_sequence(tokens, 0, True)  # every token is an output, as Llama.embed marks them
        llama._ctx.kv_cache_clear()
        llama._ctx.decode(llama._batch)
        llama._batch.reset()
        pointer = llama_cpp.llama_get_embeddings_seq(llama._ctx.ctx, 0)
        return np.ctypeslib.as_array(pointer, shape=(self.n_embd,)).copy()

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_) -> _PooledOutput:
        rows, width = input_ids.shape
        pooled = torch.zeros(rows, self.n_embd, dtype=torch.float32)
        for r in range(rows):
            n = width if attention_mask is None else int(attention_mask[r].sum())
            pooled[r] = torch.from_numpy(self.embed_ids(input_ids[r, :n].tolist()))
        return _PooledOutput(mean_pooled=pooled)

    def tokenize(self, text: str) -> list[int]:
        """llama.cpp's WordPiece ids of ``text``, without [CLS]/[SEP] (as the study's windows are cut)."""
        return self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=False)


def tokenization_mismatches(runtime, tokenizer, texts: list[str]) -> list[tuple[int, list[int], list[int]]]:
    """Texts that llama.cpp tokenizes differently from the Hugging Face tokenizer.

    Returns:
        ``[(index, hf_ids, llama_ids), ...]``; empty when every text gives the same ids
        (both without special tokens).
    """
    out = []
    for i, text in enumerate(texts):
        expected = tokenizer(text, add_special_tokens=False)["input_ids"]
        got = runtime.tokenize(text)
        if got != expected:
            out.append((i, expected, got))
    return out
