"""Deployment targets: the file formats runtimes load (GGUF for llama.cpp, compressed-tensors for
vLLM / transformers, and Presso's own folder).

Typical use::

    from presso.targets import get_target

    target = get_target("gguf")
    target.check_plan(model, plan)                  # before compressing: storable?
    result = compress_(model, plan, ...)            # quantizes on the target's grid
    size = target.predict_bytes(model, result)      # exact bytes of the file
    written = target.write(model, result, tokenizer, Path("model.gguf"))
    runtime = target.load(written.path)             # e.g. a llama_cpp.Llama
"""

from __future__ import annotations

import importlib

from presso.targets._base import Target, WrittenTarget, kernel_counts, size_line, size_terms
from presso.targets._registry import get_target, register_target, target_names


def _lazy(module: str, cls: str):
    # Targets import their runtime libraries (gguf, llama_cpp, compressed_tensors) only when used.
    return lambda: getattr(importlib.import_module(module), cls)()


register_target("presso", _lazy("presso.targets.presso_folder", "PressoTarget"))
register_target("gguf", _lazy("presso.targets.gguf", "GGUFTarget"))
register_target("compressed-tensors", _lazy("presso.targets.compressed_tensors", "CompressedTensorsTarget"))

__all__ = ["Target", "WrittenTarget", "get_target", "kernel_counts", "register_target", "size_line", "size_terms",
           "target_names"]
