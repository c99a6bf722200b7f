"""What a deployment target is: the storage formats a runtime loads, and how to write and read them.

A target answers five questions for the search and for ``presso apply``:

* which storage formats each compressible module may take, under the runtime's shape rules
  (:meth:`Target.check_plan` raises a one-line :class:`~presso.errors.PressoError` naming the
  module, the choice and what the target offers);
* how to reproduce in torch exactly the weights the runtime computes with (the compression
  engine quantizes on the target's grid, so a trial scores what will be deployed), and what else
  the runtime rounds while it computes (:meth:`Target.emulate`: llama.cpp's 8-bit activations);
* the exact bytes of the file it writes, predicted before anything is written
  (:meth:`Target.predict_bytes`; the size objectives read it);
* how to write that file (:meth:`Target.write`);
* how to load it back in the runtime (:meth:`Target.load`);
* which kernel (or fallback) the runtime multiplies each weight with (:meth:`Target.kernels`;
  a trial stores the counts, MLflow the per-module table).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class WrittenTarget:
    """What :meth:`Target.write` produced.

    Attributes:
        path: the file or folder written.
        predicted_bytes: :meth:`Target.predict_bytes` before writing (the trial's ``size_bytes``).
        on_disk_bytes: the bytes that count, measured after writing (same definition).
        files: ``{file name: bytes}`` of everything written, side files included.
    """

    path: Path
    predicted_bytes: int
    on_disk_bytes: int
    files: dict[str, int] = field(default_factory=dict)


@runtime_checkable
class Target(Protocol):
    """A deployment format. Implementations live one per module in ``presso/targets/``."""

    name: str
    """The registry name a study file uses (``target: gguf``)."""

    runtime: str
    """Who loads the output, in words (``llama.cpp (llama-cpp-python)``)."""

    size_counts: str
    """What ``size_bytes`` counts, in words (``model.safetensors (weights and header)``)."""

    dense_counts: str
    """What ``dense_bytes``, the denominator of ``size_fraction``, counts; ``{dtype}`` is the dense
    model's weight type (``the dense {dtype} weights ...``)."""

    def check_plan(self, model, plan) -> None:
        """Raise :class:`PressoError` if a module's choice is not storable in this target."""

    def predict_bytes(self, model, result) -> int:
        """Exact bytes of the weights file(s) :meth:`write` would produce for this compression."""

    def write(self, model, result, tokenizer, out: Path, *, force: bool = False) -> WrittenTarget:
        """Write the deployable artifact for ``model`` compressed as ``result`` says."""

    def load(self, path: Path, **kwargs: Any):
        """Load ``path`` in the target's runtime (the object the runtime hands back)."""

    def kernels(self, model, result) -> dict[str, str]:
        """``{module: kernel}``: what the runtime computes each weight matrix with, in words."""

    def emulate(self, model, result) -> AbstractContextManager:
        """A context under which the compressed torch ``model`` computes as the runtime does
        beyond its weights (trials are measured inside it); a no-op where the runtime computes
        in the model's own float type."""


def kernel_counts(kernels: dict[str, str]) -> dict[str, int]:
    """How many modules run each kernel: the compact form a trial stores."""
    counts: dict[str, int] = {}
    for kernel in kernels.values():
        counts[kernel] = counts.get(kernel, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def size_terms(target, dtype: str) -> dict[str, str]:
    """``{"counts", "dense"}``: what a study's ``size_bytes`` and ``dense_bytes`` count under
    ``target``, with the dense model's weight type (``fp32``) filled in."""
    return {"counts": target.size_counts, "dense": target.dense_counts.format(dtype=dtype)}


def size_line(size_bytes: int, dense_bytes: int, terms: dict[str, str]) -> str:
    """The one way Presso prints a size: ``model.safetensors (weights and header): 3,456,789
    bytes = 0.13022 of the dense fp32 weights (...: 26,543,210 bytes)``. ``size_fraction`` is the
    same quotient, printed with the same digits."""
    return (f"{terms['counts']}: {size_bytes:,} bytes = {size_bytes / dense_bytes:.5g} of "
            f"{terms['dense']}: {dense_bytes:,} bytes")
