"""The ``presso`` target: Presso's own folder (bit-packed codes, sparse bitmasks, LoRA adapters).

It stores what the runtimes' formats cannot (3/5/6/7-bit codes, sparse encodings, adapters);
:func:`presso.compress.load_compressed` loads it back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from presso.errors import PressoError
from presso.targets._base import WrittenTarget


class PressoTarget:
    name = "presso"
    runtime = "presso (presso.compress.load_compressed)"

    def check_plan(self, model, plan) -> None:
        for key, cfg in plan.layers.items():
            if cfg.quant.format is not None:
                raise PressoError(f"plan.layers[{key!r}].quant.format: got {cfg.quant.format!r}; target presso stores "
                                  "bits/group_size codes; allowed: target gguf for ggml formats")

    def dense_bytes(self, model) -> int:
        from presso.search._evaluator import dense_nbytes

        return dense_nbytes(model)

    def predict_bytes(self, model, result) -> int:
        return result.size.file_bytes

    def write(self, model, result, tokenizer, out: Path, *, force: bool = False) -> WrittenTarget:
        from presso.compress import save_compressed

        saved = save_compressed(model, result, tokenizer, out, force=force)
        return WrittenTarget(path=saved.path, predicted_bytes=saved.predicted_bytes,
                             on_disk_bytes=saved.on_disk_bytes, files=saved.files)

    def load(self, path: Path, **kwargs: Any):
        from presso.compress import load_compressed

        return load_compressed(path, **kwargs).model
