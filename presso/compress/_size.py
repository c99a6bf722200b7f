"""Exact size accounting, computed without writing files.

The stored layout (tensor names, dtypes, shapes) is built by :func:`stored_layout`, which
:mod:`presso.compress._save` also uses to write ``model.safetensors``; the safetensors header
is reproduced byte for byte (same JSON, same tensor order, same padding), so the predicted
file size equals the written one. Side files (config, tokenizer, plan, manifest) are
predicted from their text, the tokenizer's bytes measured once per tokenizer object.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field

import torch

from presso.compress._pack import packed_nbytes
from presso.compress._quant import n_groups

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
PLAN_FILE = "presso_plan.yaml"
MANIFEST_FILE = "presso_manifest.json"
META_KEY = "presso"

# safetensors dtype names, and their serialization order (the writer sorts tensors by its
# Dtype enum, descending, then by name).
_ST_DTYPE = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
_ST_ORDER = ["U64", "I64", "F64", "C64", "F32", "U32", "I32", "BF16", "F16", "U16", "I16",
             "F8_E8M0", "F8_E4M3", "F8_E5M2", "I8", "U8", "F6_E3M2", "F6_E2M3", "F4", "BOOL"]
_ST_RANK = {name: i for i, name in enumerate(_ST_ORDER)}


def st_dtype(dtype: torch.dtype) -> str:
    try:
        return _ST_DTYPE[dtype]
    except KeyError:
        raise ValueError(f"dtype {dtype} is not supported by the presso format") from None


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


@dataclass(frozen=True)
class TensorSpec:
    """One stored tensor: name, dtype and shape (its byte count follows)."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n * _itemsize(self.dtype)


@dataclass(frozen=True)
class ModuleSize:
    """Stored bytes of one compressed module, split by kind, and its uncompressed bytes."""

    dense_bytes: int
    codes_bytes: int = 0
    scales_bytes: int = 0
    zeros_bytes: int = 0
    mask_bytes: int = 0
    values_bytes: int = 0  # unquantized weights (dense, or only the kept ones when sparse)
    bias_bytes: int = 0
    adapter_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        return (self.codes_bytes + self.scales_bytes + self.zeros_bytes + self.mask_bytes
                + self.values_bytes + self.bias_bytes + self.adapter_bytes)


@dataclass(frozen=True)
class SizeReport:
    """Bytes of a compressed model as :func:`save_compressed` stores it.

    Attributes:
        tensor_bytes: data bytes of every tensor in ``model.safetensors`` (tied tensors once).
        header_bytes: the safetensors header (8-byte length + padded JSON).
        side_bytes: predicted bytes of the other files, by file name.
        dense_bytes: data bytes of the uncompressed model's tensors (same dtype, tied once).
        modules: per compressed module breakdown.
    """

    tensor_bytes: int
    header_bytes: int
    dense_bytes: int
    side_bytes: dict[str, int] = field(default_factory=dict)
    modules: dict[str, ModuleSize] = field(default_factory=dict)

    @property
    def file_bytes(self) -> int:
        """Size of ``model.safetensors``."""
        return self.tensor_bytes + self.header_bytes

    @property
    def total_bytes(self) -> int:
        """Predicted size of the whole saved directory (sum of file sizes)."""
        return self.file_bytes + sum(self.side_bytes.values())

    @property
    def size_fraction(self) -> float:
        """``model.safetensors`` (header included) over the uncompressed model's tensor bytes: the
        same quotient as a study's ``size_fraction`` and ``presso apply``'s line."""
        return self.file_bytes / self.dense_bytes if self.dense_bytes else 1.0

    @property
    def covered_fraction(self) -> float:
        """Bytes of the compressed modules (with biases and adapters) over their dense bytes."""
        dense = sum(m.dense_bytes for m in self.modules.values())
        return sum(m.total_bytes for m in self.modules.values()) / dense if dense else 1.0


def weight_encoding(rec) -> str:
    """``"sparse"`` (bitmask + kept entries) when strictly smaller than dense storage, else ``"dense"``
    (a pruned weight on a float-minimum grid is always sparse: its zeros are not on the grid)."""
    if rec.mask is None:
        return "dense"
    if rec.bits is not None and zero_kind(rec) == "float":
        return "sparse"  # exact 0 is off a float-minimum grid: pruned slots need the mask
    numel = rec.shape[0] * rec.shape[1]
    if rec.bits is None:
        per = _itemsize(rec.dtype) * 8
        dense, sparse = numel * per // 8, packed_nbytes(numel, 1) + rec.n_kept * per // 8
    else:
        dense = packed_nbytes(numel, rec.bits)
        sparse = packed_nbytes(numel, 1) + packed_nbytes(rec.n_kept, rec.bits)
    return "sparse" if sparse < dense else "dense"


def zero_kind(rec) -> str:
    """``"float"`` for a layout with fp16 group minimums, else ``"int"`` (integer or implicit zero points)."""
    return "float" if getattr(rec, "mins", None) is not None or getattr(rec, "method", "rtn") == "rtn_fmin" else "int"


def module_specs(rec, prefix: str) -> list[tuple[str, TensorSpec]]:
    """``(kind, spec)`` of the tensors stored for a compressed module's weight."""
    out_f, in_f = rec.shape
    numel = out_f * in_f
    w = f"{prefix}.weight"
    sparse = weight_encoding(rec) == "sparse"
    specs = []
    if sparse:
        specs.append(("mask", TensorSpec(f"{w}.mask", torch.uint8, (packed_nbytes(numel, 1),))))
    if rec.bits is None:
        if sparse:
            specs.append(("values", TensorSpec(f"{w}.values", rec.dtype, (rec.n_kept,))))
        else:
            specs.append(("values", TensorSpec(w, rec.dtype, (out_f, in_f))))
        return specs
    n_codes = rec.n_kept if sparse else numel
    groups = n_groups(in_f, rec.group_size)
    specs.append(("codes", TensorSpec(f"{w}.codes", torch.uint8, (packed_nbytes(n_codes, rec.bits),))))
    specs.append(("scales", TensorSpec(f"{w}.scales", torch.float16, (out_f, groups))))
    if zero_kind(rec) == "float":  # fp16 group minimums (method rtn_fmin), counted with the zero points
        specs.append(("zeros", TensorSpec(f"{w}.mins", torch.float16, (out_f, groups))))
    elif not rec.symmetric:
        specs.append(("zeros", TensorSpec(f"{w}.zeros", torch.uint8, (packed_nbytes(out_f * groups, rec.bits),))))
    return specs


def unique_state(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The model's state dict with tied tensors once, and ``{alias: stored name}`` for the rest."""
    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        tensor = tensor.detach()
        if tensor.numel() == 0:
            unique[name] = tensor
            continue
        key = (tensor.device, tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tuple(tensor.stride()))
        if key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
            unique[name] = tensor
    return unique, aliases


def _owner(key: str, names) -> str | None:
    """The compressed module a state-dict key belongs to (its own tensors, bias or adapters)."""
    parts = key.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        candidate = ".".join(parts[:cut])
        if candidate in names:
            return candidate
    return None


def stored_layout(model, result) -> tuple[list[TensorSpec], dict, dict[str, ModuleSize], int]:
    """Everything ``model.safetensors`` will hold for ``model`` compressed as ``result``.

    Returns:
        ``(specs, metadata, module sizes, dense_bytes)``; ``metadata`` is the JSON-able
        layout stored under the ``presso`` header key.
    """
    from presso.compress._modules import base_module

    unique, aliases = unique_state(model)
    prefixes = {name: base_module(model, name)[1] for name in result.modules}
    weight_keys = {f"{prefix}.weight": name for name, prefix in prefixes.items()}
    specs: list[TensorSpec] = []
    dense_bytes = 0
    per_module: dict[str, dict[str, int]] = {name: {} for name in result.modules}

    def add(fqn, kind, n):
        per_module[fqn][kind] = per_module[fqn].get(kind, 0) + n

    for key, tensor in unique.items():
        nbytes = tensor.numel() * tensor.element_size()
        is_adapter = ".lora_" in key
        if not is_adapter:
            dense_bytes += nbytes
        if key in weight_keys:
            fqn = weight_keys[key]
            add(fqn, "dense", nbytes)
            for kind, spec in module_specs(result.modules[fqn], prefixes[fqn]):
                specs.append(spec)
                add(fqn, kind, spec.nbytes)
            continue
        specs.append(TensorSpec(key, tensor.dtype, tuple(tensor.shape)))
        fqn = _owner(key, per_module)
        if fqn is None:
            continue
        if is_adapter:
            add(fqn, "adapter", nbytes)
        else:
            add(fqn, "bias", nbytes)
            add(fqn, "dense", nbytes)
    sizes = {
        name: ModuleSize(
            dense_bytes=d.get("dense", 0), codes_bytes=d.get("codes", 0), scales_bytes=d.get("scales", 0),
            zeros_bytes=d.get("zeros", 0), mask_bytes=d.get("mask", 0), values_bytes=d.get("values", 0),
            bias_bytes=d.get("bias", 0), adapter_bytes=d.get("adapter", 0),
        )
        for name, d in per_module.items()
    }
    metadata = {
        "format": FORMAT_VERSION,
        "dtype": str(getattr(model, "dtype", torch.float32)).removeprefix("torch."),
        "modules": {
            name: {
                "prefix": prefixes[name],
                "shape": list(rec.shape),
                "dtype": str(rec.dtype).removeprefix("torch."),
                "bits": rec.bits,
                "group_size": rec.group_size,
                "symmetric": rec.symmetric,
                "method": getattr(rec, "method", "rtn"),
                "zero_kind": zero_kind(rec),
                "encoding": weight_encoding(rec),
                "kept": rec.n_kept,
            }
            for name, rec in result.modules.items()
        },
        "adapters": {name: {"rank": r, "alpha": a} for name, (r, a) in result.adapters.items()},
        "aliases": aliases,
    }
    return specs, metadata, sizes, dense_bytes


def metadata_text(metadata: dict) -> str:
    return json.dumps(metadata, sort_keys=True, separators=(",", ":"))


def safetensors_header_bytes(specs: list[TensorSpec], metadata: dict[str, str] | None) -> int:
    """Bytes before the tensor data in a safetensors file written from ``specs``: 8 + padded JSON."""
    order = sorted(specs, key=lambda s: (_ST_RANK[st_dtype(s.dtype)], s.name))
    header: dict = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    for spec in order:
        end = offset + spec.nbytes
        header[spec.name] = {"dtype": st_dtype(spec.dtype), "shape": list(spec.shape), "data_offsets": [offset, end]}
        offset = end
    n = len(json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    return 8 + n + (-n) % 8


# -- side files -----------------------------------------------------------------------

_TOKENIZER_CACHE: dict[int, tuple[object, dict[str, bytes]]] = {}


def tokenizer_files(tokenizer, refresh: bool = False) -> dict[str, bytes]:
    """The files ``tokenizer.save_pretrained`` writes, by name; measured once per tokenizer object."""
    if tokenizer is None:
        return {}
    key = id(tokenizer)
    hit = _TOKENIZER_CACHE.get(key)
    if hit is not None and hit[0] is tokenizer and not refresh:
        return hit[1]
    with tempfile.TemporaryDirectory(prefix="presso-tok-") as tmp:
        tokenizer.save_pretrained(tmp)
        files = {}
        for root, _, names in os.walk(tmp):
            for fname in names:
                path = os.path.join(root, fname)
                with open(path, "rb") as handle:
                    files[os.path.relpath(path, tmp).replace(os.sep, "/")] = handle.read()
    _TOKENIZER_CACHE[key] = (tokenizer, files)
    return files


# transformers' `from_pretrained` reads `transformers_weights` as the weights file to load and raises
# ValueError quoting it when it is not a *.safetensors name: a plain `from_pretrained` on a Presso
# folder thus fails with this hint instead of random-initialising the packed weights.
# `load_compressed` builds the model with `from_config`, which ignores the key.
NOT_TRANSFORMERS = ("this is a Presso folder (packed codes): load it with presso.compress.load_compressed(DIR), "
                    "or write a runtime format with presso apply --target compressed-tensors|gguf")


def config_text(model) -> str:
    """``config.json`` as written for ``model`` (``architectures`` set like ``save_pretrained``;
    ``transformers_weights`` set to :data:`NOT_TRANSFORMERS`)."""
    import copy

    config = copy.deepcopy(model.config)
    config.architectures = [type(model).__name__]
    config.transformers_weights = NOT_TRANSFORMERS
    return config.to_json_string(use_diff=True)


def manifest_text(auto_class: str, model_class: str, files: dict[str, tuple[int, str]], has_tokenizer: bool) -> str:
    manifest = {
        "presso_format": FORMAT_VERSION,
        "auto_class": auto_class,
        "model_class": model_class,
        "tokenizer": has_tokenizer,
        "files": {name: {"bytes": n, "sha256": digest} for name, (n, digest) in sorted(files.items())},
    }
    return json.dumps(manifest, indent=1, sort_keys=True) + "\n"


def predict_size(model, result, tokenizer=None) -> SizeReport:
    """Predict the bytes :func:`save_compressed` writes for ``model`` compressed as ``result``.

    Nothing is written (the tokenizer's files are measured once per tokenizer and cached).

    Args:
        model: the compressed model (after :func:`compress_`).
        result: the :class:`CompressionResult` returned by :func:`compress_`.
        tokenizer: the tokenizer that will be saved alongside, or ``None``.

    Returns:
        A :class:`SizeReport`; ``total_bytes`` is the directory size.
    """
    from presso.compress._modules import auto_class_name
    from presso.plan import plan_to_yaml

    specs, metadata, sizes, dense_bytes = stored_layout(model, result)
    header = safetensors_header_bytes(specs, {META_KEY: metadata_text(metadata)})
    tensor_bytes = sum(s.nbytes for s in specs)
    side = {CONFIG_FILE: len(config_text(model).encode("utf-8"))}
    side[PLAN_FILE] = len(plan_to_yaml(result.plan).encode("utf-8"))
    tok_files = tokenizer_files(tokenizer)
    for name, data in tok_files.items():
        side[name] = len(data)
    listed = {name: (n, "0" * 64) for name, n in side.items()}
    listed[WEIGHTS_FILE] = (tensor_bytes + header, "0" * 64)
    text = manifest_text(auto_class_name(model), type(model).__name__, listed, bool(tok_files))
    side[MANIFEST_FILE] = len(text.encode("utf-8"))
    return SizeReport(tensor_bytes=tensor_bytes, header_bytes=header, dense_bytes=dense_bytes,
                      side_bytes=side, modules=sizes)


def dense_nbytes(model) -> int:
    """Bytes of the uncompressed model's tensors as stored (tied tensors once)."""
    unique, _ = unique_state(model)
    return sum(t.numel() * t.element_size() for t in unique.values())
