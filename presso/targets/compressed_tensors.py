"""The ``compressed-tensors`` target: a Hugging Face folder that transformers and vLLM load.

Formats: int4 / int8 weight-only ("W4A16" / "W8A16"), groups of 32, 64 or 128 inputs or one
group per output channel (``group_size: 0``), symmetric (zero points: see the NOTE below); a plan may
mix them per layer (one ``config_groups`` entry per distinct format, targeting exact module
names). Stored as the library's ``pack-quantized`` format:

* ``P.weight_packed`` int32 ``[out, ceil(in * bits / 32)]``, ``P.weight_scale`` ``[out, groups]``,
  ``P.weight_zero_point`` int32 ``[ceil(out * bits / 32), groups]`` (asymmetric only, packed
  along dim 0) and ``P.weight_shape`` int64 ``[2]``;
* every other tensor as it is in the model (tied tensors once, as ``save_pretrained`` does).

Presso's codes are unsigned (``code - zero``, implicit zero ``2**(bits-1)`` when symmetric);
compressed-tensors stores signed values and signed zero points, so both are shifted by
``2**(bits-1)`` (``code - zero`` is unchanged, hence the weights too). Scales are stored in the
model's dtype when that holds Presso's fp16 scales exactly (fp32, fp16), else as fp16, so
transformers' dequantization computes the very weights Presso scored.

Rules (from what vLLM's ``CompressedTensorsWNA16`` scheme serves): 4 or 8 bits only, no
sparsity, no LoRA adapters, embedding tables unquantized (vLLM quantizes Linear layers only),
and the projections vLLM fuses into one matmul (q/k/v, gate/up) share one format. Every Linear
no config group targets is listed in ``ignore`` (vLLM refuses a Linear that matches neither).
Not checked here: which vLLM kernel takes a layer (Marlin wants ``in_features % 128 == 0``;
other shapes fall back to vLLM's other mixed-precision kernels).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from torch import nn

from presso.compress import (TensorSpec, compressible_modules, embedding_modules, safetensors_header_bytes,
                             unique_state)
from presso._files import replace_dir
from presso.errors import PressoError
from presso.targets._base import WrittenTarget

WEIGHTS_FILE = "model.safetensors"
BITS = (4, 8)
GROUP_SIZES = (0, 32, 64, 128)  # 0 = per output channel
# Sibling projections vLLM loads into one fused matmul: they must share one quantization scheme.
FUSED_SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"), ("query", "key", "value"))
_OFFERED = "int4/int8 weight-only, group_size 0 (per channel)/32/64/128, symmetric"
# NOTE: asymmetric (zero-point) checkpoints are written in the library's layout (zero points packed
# along dim 0, as vLLM reads them), but transformers 5.24 with compressed-tensors 0.20 cannot load
# them (it builds the compressed module on the meta device, where the library leaves the zero point
# unpacked, and refuses the shape mismatch; known upstream: llm-compressor#1618, compressed-tensors#458).
# Until that loads, the target offers symmetric only.
_NO_ZERO_POINTS = ("allowed: symmetric true (transformers 5.24 + compressed-tensors 0.20 cannot load packed zero "
                   "points; use target presso or gguf for zero points)")


def _format(cfg) -> tuple[int, int, bool] | None:
    """``(bits, group_size, symmetric)`` of a layer config, or ``None`` when unquantized."""
    if cfg is None or not cfg.quant.active:
        return None
    return cfg.quant.bits, cfg.quant.group_size, cfg.quant.symmetric


def _format_name(fmt) -> str:
    if fmt is None:
        return "unquantized"
    bits, g, sym = fmt
    return f"int{bits} {'per-channel' if g == 0 else f'g{g}'} {'symmetric' if sym else 'asymmetric'}"


def scale_dtype(model_dtype: torch.dtype) -> torch.dtype:
    """fp32 for fp32 models, else fp16 (Presso's scales are fp16; both hold them exactly).

    transformers casts the scales to the model's dtype when it loads them, and the library
    dequantizes in that dtype: fp32 and fp16 models compute exactly Presso's weights, a bf16
    model rounds the scales to bf16 (a runtime property no stored dtype avoids).
    """
    return torch.float32 if model_dtype == torch.float32 else torch.float16


def _packed_cols(n: int, bits: int) -> int:
    return -(-n * bits // 32)


class CompressedTensorsTarget:
    """compressed-tensors ``pack-quantized`` folders for transformers and vLLM.

    Example::

        target = get_target("compressed-tensors")
        target.check_plan(model, plan)
        result = compress_(model, plan)
        written = target.write(model, result, tokenizer, Path("out/ct"))
        reloaded = target.load(written.path)        # AutoModelForCausalLM / AutoModel
    """

    name = "compressed-tensors"
    runtime = "vLLM (vllm serve DIR) and transformers (from_pretrained)"
    size_counts = "model.safetensors (weights and header)"
    dense_counts = "the dense {dtype} weights (all tensors of the uncompressed model, tied ones once)"

    def __init__(self, *, asymmetric: bool = False):
        # asymmetric=True writes zero points too (vLLM's layout); see the NOTE on _NO_ZERO_POINTS.
        self.asymmetric = asymmetric

    # -- rules ------------------------------------------------------------------------

    def check_plan(self, model: nn.Module, plan) -> None:
        """Raise a one-line :class:`PressoError` naming the module and choice this target cannot store."""
        from presso.compress import validate_plan

        resolved = validate_plan(model, plan)
        embeddings = embedding_modules(model)
        for name, cfg in resolved.items():
            where = f"target compressed-tensors: plan.layers[{name!r}]"
            if cfg.quant.format is not None:
                raise PressoError(f"{where}.quant.format: got {cfg.quant.format!r}; allowed: bits 4 or 8 with group_size "
                                  "(ggml formats are for target gguf)")
            if cfg.quant.active and cfg.quant.method == "rtn_fmin":
                raise PressoError(f"{where}.quant.method: got 'rtn_fmin' (fp16 group minimums); allowed: rtn, imatrix, "
                                  "gptq (integer grids that compressed-tensors stores)")
            if name in embeddings and cfg.quant.active:
                raise PressoError(f"{where}.quant: got {_format_name(_format(cfg))} on an embedding table; allowed: "
                                  "embedding tables unquantized (vLLM loads compressed-tensors quantization on Linear layers only)")
            if cfg.sparsity.active:
                raise PressoError(f"{where}.sparsity: got {cfg.sparsity.amount or cfg.sparsity.structure!r}; allowed: amount 0 "
                                  f"(this target stores {_OFFERED}; use target presso for sparsity)")
            if cfg.adapter.active:
                raise PressoError(f"{where}.adapter.rank: got {cfg.adapter.rank}; allowed: 0 "
                                  "(this target stores no LoRA adapters; use target presso)")
            if not cfg.quant.active:
                continue
            if cfg.quant.bits not in BITS:
                raise PressoError(f"{where}.quant.bits: got {cfg.quant.bits}; allowed: {list(BITS)} or 16 (unquantized); "
                                  "vLLM serves 4- and 8-bit compressed-tensors weights only")
            if cfg.quant.group_size not in GROUP_SIZES:
                raise PressoError(f"{where}.quant.group_size: got {cfg.quant.group_size}; allowed: {list(GROUP_SIZES)} "
                                  "(0 = per output channel)")
            if not cfg.quant.symmetric and not self.asymmetric:
                raise PressoError(f"{where}.quant.symmetric: got false; {_NO_ZERO_POINTS}")
        formats = {name: _format(resolved.get(name)) for name in compressible_modules(model)}
        for name, fmt in formats.items():
            parent, _, leaf = name.rpartition(".")
            for siblings in FUSED_SIBLINGS:
                if leaf not in siblings or leaf == siblings[0]:
                    continue
                first = f"{parent}.{siblings[0]}"
                if first in formats and formats[first] != fmt:
                    raise PressoError(
                        f"target compressed-tensors: plan.layers[{name!r}].quant: got {_format_name(fmt)} but "
                        f"{first!r} has {_format_name(formats[first])}; allowed: one format for {'/'.join(siblings)} of a "
                        "block (vLLM fuses them into one matmul)")

    # -- layout -----------------------------------------------------------------------

    def _quantized(self, model: nn.Module, result) -> dict[str, Any]:
        """The result's quantized modules; anything this target cannot store raises (as check_plan would)."""
        mods = {}
        embeddings = embedding_modules(model)
        for name, rec in result.modules.items():
            if name in embeddings and rec.bits is not None:
                raise PressoError(f"target compressed-tensors: embedding table {name!r} is quantized; allowed: "
                                  "embedding tables unquantized (vLLM loads compressed-tensors quantization on Linear layers only)")
            if rec.mask is not None or name in result.adapters:
                raise PressoError(f"target compressed-tensors: module {name!r} is pruned or has an adapter; "
                                  f"allowed: {_OFFERED} (call check_plan before compressing)")
            if rec.bits is not None:
                if rec.bits not in BITS or rec.group_size not in GROUP_SIZES:
                    raise PressoError(f"target compressed-tensors: module {name!r} has {_format_name((rec.bits, rec.group_size, rec.symmetric))}; "
                                      f"allowed: {_OFFERED}")
                if not rec.symmetric and not self.asymmetric:
                    raise PressoError(f"target compressed-tensors: module {name!r} has zero points; {_NO_ZERO_POINTS}")
                mods[name] = rec
        return mods

    def _specs(self, model: nn.Module, result) -> tuple[list[TensorSpec], dict[str, torch.Tensor]]:
        """The tensors of the weights file (specs) and the untouched ones to copy (by name)."""
        mods = self._quantized(model, result)
        unique, _ = unique_state(model)
        specs: list[TensorSpec] = []
        for name, rec in mods.items():
            unique.pop(f"{name}.weight")
            out_f, in_f = rec.shape
            groups = rec.scales.shape[1]
            specs.append(TensorSpec(f"{name}.weight_packed", torch.int32, (out_f, _packed_cols(in_f, rec.bits))))
            specs.append(TensorSpec(f"{name}.weight_scale", scale_dtype(rec.dtype), (out_f, groups)))
            specs.append(TensorSpec(f"{name}.weight_shape", torch.int64, (2,)))
            if not rec.symmetric:
                specs.append(TensorSpec(f"{name}.weight_zero_point", torch.int32, (_packed_cols(out_f, rec.bits), groups)))
        specs.extend(TensorSpec(k, v.dtype, tuple(v.shape)) for k, v in unique.items())
        return specs, unique

    def dense_bytes(self, model: nn.Module) -> int:
        """Bytes of the uncompressed model's tensors (the denominator of ``size_fraction``)."""
        from presso.compress import dense_nbytes

        return dense_nbytes(model)

    def predict_bytes(self, model: nn.Module, result) -> int:
        """Exact bytes of ``model.safetensors`` as :meth:`write` writes it (header included)."""
        specs, _ = self._specs(model, result)
        return sum(s.nbytes for s in specs) + safetensors_header_bytes(specs, _METADATA)

    def _tensors(self, model: nn.Module, result) -> dict[str, torch.Tensor]:
        from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

        specs, unique = self._specs(model, result)
        tensors = {k: v.detach().contiguous() for k, v in unique.items()}
        for name, rec in self._quantized(model, result).items():
            half = 1 << (rec.bits - 1)
            # Presso's unsigned codes -> the library's signed int8 values (it adds 2**(bits-1) back when packing).
            signed = (rec.codes.to(torch.int16) - half).to(torch.int8)
            tensors[f"{name}.weight_packed"] = pack_to_int32(signed, rec.bits)
            tensors[f"{name}.weight_scale"] = rec.scales.to(scale_dtype(rec.dtype)).contiguous()
            tensors[f"{name}.weight_shape"] = torch.tensor(rec.shape, dtype=torch.int64)
            if not rec.symmetric:
                zp = (rec.zeros.to(torch.int16) - half).to(torch.int8)
                tensors[f"{name}.weight_zero_point"] = pack_to_int32(zp, rec.bits, packed_dim=0).contiguous()
        got = sorted((k, v.dtype, tuple(v.shape)) for k, v in tensors.items())
        if got != sorted((s.name, s.dtype, s.shape) for s in specs):  # invariant: prediction == file
            raise RuntimeError("compressed-tensors: written tensors differ from the predicted layout")
        return tensors

    def quantization_config(self, model: nn.Module, result) -> dict:
        """The ``quantization_config`` of ``config.json``: one config group per distinct format."""
        from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme

        by_format: dict[tuple[int, int, bool], list[str]] = {}
        for name, rec in self._quantized(model, result).items():
            by_format.setdefault((rec.bits, rec.group_size, rec.symmetric), []).append(name)
        groups = {}
        for i, ((bits, g, sym), names) in enumerate(by_format.items()):
            args = QuantizationArgs(num_bits=bits, type="int", symmetric=sym, dynamic=False,
                                    strategy="group" if g else "channel", group_size=g or None)
            groups[f"group_{i}"] = QuantizationScheme(targets=names, weights=args, format="pack-quantized")
        quantized = set().union(*by_format.values()) if by_format else set()
        # vLLM needs every Linear that no group targets listed in `ignore` (lm_head included).
        ignore = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in quantized]
        config = QuantizationConfig(config_groups=groups, format="pack-quantized", quantization_status="compressed",
                                    ignore=ignore)
        return config

    # -- files ------------------------------------------------------------------------

    def write(self, model: nn.Module, result, tokenizer, out: Path, *, force: bool = False) -> WrittenTarget:
        """Write the folder (``model.safetensors``, ``config.json`` with ``quantization_config``, tokenizer).

        Raises:
            PressoError: ``out`` exists and ``force`` is false, or the result holds a format this target does not store.
        """
        from compressed_tensors.compressors import ModelCompressor
        from safetensors.torch import save_file

        out = Path(out)
        if out.exists() and not force:
            raise PressoError(f"out: {str(out)!r} already exists; pass force=True to replace it")
        predicted = self.predict_bytes(model, result)
        tensors = self._tensors(model, result)
        qconfig = self.quantization_config(model, result)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            save_file({k: v.cpu() for k, v in tensors.items()}, str(tmp / WEIGHTS_FILE), metadata=_METADATA)
            config = model.config.to_dict()
            config["architectures"] = [type(model).__name__]
            config.pop("transformers_weights", None)
            (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            ModelCompressor(quantization_config=qconfig).update_config(str(tmp))  # the library writes its config
            if getattr(model, "can_generate", lambda: False)() and model.generation_config is not None:
                model.generation_config.save_pretrained(str(tmp))  # as save_pretrained does (vLLM reads it)
            if tokenizer is not None:
                tokenizer.save_pretrained(str(tmp))
            replace_dir(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        files = {p.relative_to(out).as_posix(): p.stat().st_size for p in out.rglob("*") if p.is_file()}
        return WrittenTarget(path=out, predicted_bytes=predicted, on_disk_bytes=files[WEIGHTS_FILE], files=files)

    def load(self, path: Path, **kwargs: Any):
        """Plain transformers: ``AutoModelForCausalLM.from_pretrained`` (``AutoModel`` for encoders)."""
        import transformers

        config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
        causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in (config.architectures or []))
        cls = transformers.AutoModelForCausalLM if causal else transformers.AutoModel
        return cls.from_pretrained(str(path), local_files_only=True, **kwargs).eval()

    def kernels(self, model: nn.Module, result) -> dict[str, str]:
        """What transformers runs: it decompresses the packed weights once, on the first forward.

        vLLM picks its own WNA16 kernel per layer when it loads the folder (Marlin, Machete,
        Exllama, ... by GPU and shape) and logs it; that choice is made on the GPU host.
        """
        mods = self._quantized(model, result)
        kernels = {}
        for name, module in model.named_modules():
            if not isinstance(module, nn.Linear):
                continue
            rec = mods.get(name)
            kernels[name] = ("torch dense matmul (unquantized, in ignore)" if rec is None else
                             f"torch dense matmul on {_format_name((rec.bits, rec.group_size, rec.symmetric))} "
                             "decompressed by compressed-tensors at the first forward")
        return kernels

    def emulate(self, model, result):
        """Nothing to emulate: transformers and vLLM's W4A16/W8A16 kernels dequantize to the activations' float type."""
        return contextlib.nullcontext(model)


# safetensors header metadata, as save_pretrained writes it (vLLM and transformers read "format").
_METADATA = {"format": "pt"}

__all__ = ["CompressedTensorsTarget"]
