"""The ``gguf`` target: one self-contained ``.gguf`` file that llama.cpp loads and runs.

What is written: the architecture metadata (from the model's config), the tokenizer (llama.cpp
needs its vocabulary in the file), and every tensor. A module the plan gives a ggml format
(``quant.format``) is stored as the ggml blocks the compression engine made
(:mod:`presso.compress._formats`); every other tensor stays F32, as ``convert_hf_to_gguf.py
--outtype f32`` would write it. The size objectives read :meth:`GGUFTarget.predict_bytes`, which
equals the written file's bytes exactly: the header's length does not depend on the tensor types
(a type is one uint32 in the tensor info), and each tensor's data is padded to the file's alignment.

Supported architectures (:mod:`presso.targets._gguf_arch`, keyed by ``config.model_type``):
Llama-family causal LMs (``LlamaForCausalLM``; SmolLM2 is one), whose tokenizer keys come from a
GGUF of the same model, and BERT encoders (``BertModel``; MiniLM is one), written as llama.cpp's
``bert`` embedding architecture with the WordPiece vocabulary of the model folder's tokenizer.

Why not re-quantize with ``llama-quantize``: it is not in llama-cpp-python's wheel, and the
blocks would be made twice; ggml's ``ggml_quantize_chunk`` is the routine ``llama-quantize`` calls.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from presso.compress import block_size, fits, row_nbytes
from presso.errors import PressoError
from presso.plan import STORAGE_FORMATS as FORMATS
from presso.targets._base import WrittenTarget
from presso.targets._gguf_arch import EMBEDDING, arch_for, permute_rows, runtime_of

ALIGNMENT = 32  # GGUF's default general.alignment


def _pad(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


class _Layout:
    """The model's tensors in GGUF terms (name, HF key, permutation, in one fixed order) and its header size."""

    def __init__(self, model):
        self.arch = arch_for(model)
        self.config = model.config
        self.entries = self.arch.entries(model)
        state = model.state_dict()
        self.shapes = {e.key: tuple(state[e.key].shape) for e in self.entries}
        self.header_bytes = _header_bytes(self, model)


def _header_bytes(layout: _Layout, model) -> int:
    """Bytes before the tensor data (padded): written once per model with placeholder types."""
    import gguf

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "header.gguf"
        writer = gguf.GGUFWriter(str(path), layout.arch.arch)
        layout.arch.metadata(writer, model)
        for entry in layout.entries:
            shape = layout.shapes[entry.key]
            writer.add_tensor_info(entry.gguf_name, shape, np.dtype(np.float32), int(np.prod(shape)) * 4,
                                   raw_dtype=gguf.GGMLQuantizationType.F32)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        writer.close()
        return _pad(path.stat().st_size)


def layout(model) -> _Layout:
    """The model's GGUF layout, built once per model object (its header is written once)."""
    cached = getattr(model, "_presso_gguf_layout", None)
    if cached is None:
        cached = _Layout(model)
        object.__setattr__(model, "_presso_gguf_layout", cached)
    return cached


def _tensor_nbytes(rec, shape) -> int:
    if rec is not None and rec.format is not None:
        return shape[0] * row_nbytes(rec.format, shape[1])
    n = 1
    for d in shape:
        n *= d
    return n * 4


def _file_bytes(lay: _Layout, by_key: dict) -> int:
    return lay.header_bytes + sum(_pad(_tensor_nbytes(by_key.get(e.key), lay.shapes[e.key])) for e in lay.entries)


class GGUFTarget:
    """llama.cpp's format (see the module docstring)."""

    name = "gguf"
    runtime = "llama.cpp (llama-cpp-python)"
    size_counts = "the .gguf file (weights, header, embedded tokenizer)"
    dense_counts = "the same model as an all-F32 .gguf file"
    suffix = ".gguf"

    def offered_formats(self, in_features: int) -> list[str]:
        """The ggml formats a module with rows of ``in_features`` values can take."""
        return [f for f in FORMATS if fits(f, in_features)]

    def check_plan(self, model, plan) -> None:
        from presso.compress import validate_plan

        layout(model)  # the architecture and tokenizer checks
        for name, cfg in validate_plan(model, plan).items():
            where = f"plan.layers[{name!r}]"
            if cfg.sparsity.active:
                raise PressoError(f"{where}.sparsity: got {cfg.sparsity.amount or cfg.sparsity.structure!r}; "
                                  "allowed for target gguf: 0 (a GGUF stores no sparse tensors, so pruning saves no bytes)")
            if cfg.adapter.active:
                raise PressoError(f"{where}.adapter.rank: got {cfg.adapter.rank}; allowed for target gguf: 0 "
                                  "(merge adapters first, or use target presso)")
            if cfg.quant.active and cfg.quant.format is None:
                raise PressoError(f"{where}.quant: got bits={cfg.quant.bits}, group_size={cfg.quant.group_size}; "
                                  f"allowed for target gguf: quant.format, one of {list(FORMATS)}")
            in_f = model.get_submodule(name).weight.shape[1]
            if cfg.quant.format is not None and not fits(cfg.quant.format, in_f):
                raise PressoError(f"{where}.quant.format: got {cfg.quant.format!r} for rows of {in_f} values "
                                  f"(blocks of {block_size(cfg.quant.format)}); allowed: {self.offered_formats(in_f)}")

    def dense_bytes(self, model) -> int:
        """Bytes of the model's all-F32 GGUF: the denominator of ``size_fraction``."""
        return _file_bytes(layout(model), {})

    def predict_bytes(self, model, result) -> int:
        return _file_bytes(layout(model), {f"{name}.weight": rec for name, rec in result.modules.items()})

    def write(self, model, result, tokenizer, out: Path, *, force: bool = False) -> WrittenTarget:
        import gguf

        out = Path(out)
        if out.exists() and not force:
            raise PressoError(f"out: {str(out)!r} already exists; pass --force to replace it")
        lay = layout(model)
        predicted = self.predict_bytes(model, result)
        by_key = {f"{name}.weight": rec for name, rec in result.modules.items()}
        state = model.state_dict()
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            writer = gguf.GGUFWriter(str(tmp), lay.arch.arch)
            lay.arch.metadata(writer, model)
            for entry in lay.entries:
                rec = by_key.get(entry.key)
                if rec is not None and rec.format is not None:
                    data, qtype = rec.packed, gguf.GGMLQuantizationType[rec.format]
                else:
                    data = state[entry.key].detach().to(device="cpu", dtype=torch.float32).numpy()
                    qtype = gguf.GGMLQuantizationType.F32
                if entry.permute_heads is not None:
                    data = permute_rows(data, entry.permute_heads)
                writer.add_tensor(entry.gguf_name, np.ascontiguousarray(data), raw_dtype=qtype)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.close()
            os.replace(tmp, out)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        size = out.stat().st_size
        return WrittenTarget(path=out, predicted_bytes=predicted, on_disk_bytes=size, files={out.name: size})

    def load(self, path: Path, **kwargs: Any):
        """The file in llama.cpp, called like the transformers model it came from: a
        :class:`LlamaCppCausalLM` (``.logits``) or, for an embedding model such as BERT, a
        :class:`LlamaCppEncoder` (mean-pooled embeddings)."""
        from presso.targets._llama_runtime import LlamaCppCausalLM, LlamaCppEncoder, gguf_architecture

        if runtime_of(gguf_architecture(Path(path))) == EMBEDDING:
            return LlamaCppEncoder(Path(path), **kwargs)
        return LlamaCppCausalLM(Path(path), **kwargs)

    def kernels(self, model, result) -> dict[str, str]:
        """ggml's CPU kernel per weight (repacked GEMM or vec_dot), as llama.cpp picks it here."""
        from presso.targets._ggml_kernels import layer_kernels

        stored = {e.key.removesuffix(".weight") for e in layout(model).entries}
        # NOTE: a module the file leaves out (BERT's pooler, as llama.cpp's converter does) runs no kernel.
        return {name: k for name, k in layer_kernels(model, result).items() if name in stored or "(tied" in k}

    def emulate(self, model, result):
        """ggml rounds each matmul's activations to the weight type's ``vec_dot_type`` (8-bit
        blocks for quantized types): the trial's model does the same while it is measured."""
        from presso.targets._ggml_activations import runtime_activations
        from presso.targets._ggml_kernels import activation_types

        return runtime_activations(model, activation_types(model, result))
