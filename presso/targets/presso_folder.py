"""The ``presso`` target: Presso's own checksummed folder (everything a plan can hold).

It stores what the runtime formats cannot (sparse encodings, LoRA adapters, 3/5/6/7-bit codes)
and is read back only by :func:`presso.compress.load_compressed`, which rebuilds dense weights.
A plain ``transformers`` ``from_pretrained`` on it fails with a message that names
``load_compressed`` (see ``presso.compress._size.NOT_TRANSFORMERS``), never loads random weights.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from presso.errors import PressoError
from presso.targets._base import WrittenTarget


class PressoTarget:
    """Wraps :func:`save_compressed` / :func:`load_compressed` / :func:`predict_size`.

    Example::

        target = get_target("presso")
        written = target.write(model, result, tokenizer, Path("out/plan-17"))
        model, tokenizer, plan = target.load(written.path)
    """

    name = "presso"
    runtime = "Presso (presso.compress.load_compressed)"
    size_counts = "model.safetensors (weights and header)"
    dense_counts = "the dense {dtype} weights (all tensors of the uncompressed model, tied ones once)"

    def check_plan(self, model, plan) -> None:
        """Every plan the compression engine accepts is storable, except ggml formats (target gguf)."""
        from presso.compress import validate_plan

        for key, cfg in plan.layers.items():
            if cfg.quant.format is not None:
                raise PressoError(f"plan.layers[{key!r}].quant.format: got {cfg.quant.format!r}; target presso stores "
                                  "bits/group_size codes; allowed: target gguf for ggml formats")
        validate_plan(model, plan)

    def dense_bytes(self, model) -> int:
        """Bytes of the uncompressed model's tensors as stored (tied tensors once)."""
        from presso.compress import dense_nbytes

        return dense_nbytes(model)

    def predict_bytes(self, model, result) -> int:
        """Exact bytes of ``model.safetensors`` (header included), as :func:`save_compressed` writes it."""
        from presso.compress import predict_size

        return predict_size(model, result).file_bytes

    def write(self, model, result, tokenizer, out: Path, *, force: bool = False) -> WrittenTarget:
        from presso.compress import WEIGHTS_FILE, save_compressed

        report = save_compressed(model, result, tokenizer, out, force=force)
        return WrittenTarget(path=report.path, predicted_bytes=report.size.file_bytes,
                             on_disk_bytes=report.files[WEIGHTS_FILE], files=dict(report.files))

    def load(self, path: Path, **kwargs: Any):
        """``LoadedCompressed(model, tokenizer, plan)``; ``kwargs`` go to :func:`load_compressed` (``device``)."""
        from presso.compress import load_compressed

        return load_compressed(path, **kwargs)

    def kernels(self, model, result) -> dict[str, str]:
        """:func:`load_compressed` rebuilds every weight in fp32: all run torch's dense matmul."""
        from torch import nn

        return {name: "torch dense matmul (rebuilt by load_compressed)" for name, m in model.named_modules()
                if isinstance(m, nn.Linear)}

    def emulate(self, model, result):
        """Nothing to emulate: Presso's loader computes with the model's float activations."""
        return contextlib.nullcontext(model)
