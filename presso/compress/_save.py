"""Saving a compressed model to a checksummed directory, and loading it back."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from presso.compress._adapters import inject_adapters
from presso.compress._compress import _COMPRESSED_FLAG, CompressionResult
from presso.compress._modules import AUTO_CLASSES, auto_class_name, base_module
from presso.compress._pack import pack_bits, unpack_bits
from presso.compress._quant import dequantize, zero_codes
from presso.compress.quantizers import dequantize_layout
from presso.compress._size import (
    CONFIG_FILE,
    FORMAT_VERSION,
    MANIFEST_FILE,
    META_KEY,
    PLAN_FILE,
    WEIGHTS_FILE,
    SizeReport,
    config_text,
    manifest_text,
    metadata_text,
    predict_size,
    stored_layout,
    tokenizer_files,
    unique_state,
    weight_encoding,
)
from presso._files import replace_dir
from presso.errors import PressoError

_AUTO_CLASSES = AUTO_CLASSES  # an allowlist: nothing else is ever imported by name


@dataclass(frozen=True)
class SavedReport:
    """What :func:`save_compressed` wrote.

    Attributes:
        path: the output directory.
        predicted_bytes: :attr:`SizeReport.total_bytes` predicted before writing.
        on_disk_bytes: sum of the sizes of the files written.
        files: ``{file name: bytes}``.
        size: the full prediction.
    """

    path: Path
    predicted_bytes: int
    on_disk_bytes: int
    files: dict[str, int]
    size: SizeReport


class LoadedCompressed(NamedTuple):
    """``(model, tokenizer, plan)`` as returned by :func:`load_compressed`."""

    model: nn.Module
    tokenizer: object
    plan: object


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _module_tensors(model: nn.Module, rec, prefix: str) -> dict[str, torch.Tensor]:
    """The packed tensors stored for one compressed module's weight (names as in ``module_specs``)."""
    w = f"{prefix}.weight"
    sparse = weight_encoding(rec) == "sparse"
    out: dict[str, torch.Tensor] = {}
    if sparse:
        out[f"{w}.mask"] = pack_bits(rec.mask, 1)
    if rec.bits is None:
        weight = base_module(model, rec.name)[0].weight.detach()
        out[f"{w}.values" if sparse else w] = weight[rec.mask].contiguous() if sparse else weight.contiguous()
        return out
    codes = rec.codes[rec.mask] if sparse else rec.codes
    out[f"{w}.codes"] = pack_bits(codes, rec.bits)
    out[f"{w}.scales"] = rec.scales.contiguous()
    if rec.mins is not None:
        out[f"{w}.mins"] = rec.mins.contiguous()
    elif not rec.symmetric:
        out[f"{w}.zeros"] = pack_bits(rec.zeros, rec.bits)
    return out


def save_compressed(
    model: nn.Module,
    result: CompressionResult,
    tokenizer,
    out_dir: str | os.PathLike,
    *,
    force: bool = False,
) -> SavedReport:
    """Write the compressed model as a directory that :func:`load_compressed` reads back.

    The directory holds ``model.safetensors`` (bit-packed codes, fp16 scales, packed zero
    points, sparse bitmasks, adapters and every untouched tensor, tied tensors once, plus the
    layout in the header metadata), ``config.json``, the tokenizer files, ``presso_plan.yaml``
    and ``presso_manifest.json`` with the sha256 of every other file. It is written into a
    temporary sibling directory and renamed into place.

    Args:
        model: the model after :func:`compress_`.
        result: the :class:`CompressionResult` of that call.
        tokenizer: saved alongside (``None`` saves no tokenizer).
        out_dir: the directory to create.
        force: replace an existing ``out_dir``.

    Returns:
        A :class:`SavedReport` with predicted and on-disk bytes.

    Raises:
        PressoError: ``out_dir`` exists and ``force`` is false.

    Example::

        report = save_compressed(model, result, tokenizer, "out/model-4bit")
        assert abs(report.on_disk_bytes - report.predicted_bytes) <= 0.01 * report.predicted_bytes
    """
    from safetensors.torch import save_file

    from presso.plan import save_plan

    out = Path(out_dir)
    if out.exists() and not force:
        raise PressoError(f"out_dir: {str(out)!r} already exists; pass force=True to replace it")
    predicted = predict_size(model, result, tokenizer)
    specs, metadata, _, _ = stored_layout(model, result)
    unique, _ = unique_state(model)
    tensors: dict[str, torch.Tensor] = {}
    for name, rec in result.modules.items():
        prefix = metadata["modules"][name]["prefix"]
        unique.pop(f"{prefix}.weight")
        tensors.update(_module_tensors(model, rec, prefix))
    for key, tensor in unique.items():
        tensors[key] = tensor.contiguous()
    got = sorted((k, v.dtype, tuple(v.shape)) for k, v in tensors.items())
    want = sorted((s.name, s.dtype, s.shape) for s in specs)
    if got != want:  # an internal invariant: prediction and file describe the same tensors
        raise RuntimeError("stored tensors differ from the predicted layout")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        save_file({k: v.detach().cpu() for k, v in tensors.items()}, str(tmp / WEIGHTS_FILE),
                  metadata={META_KEY: metadata_text(metadata)})
        (tmp / CONFIG_FILE).write_text(config_text(model), encoding="utf-8")
        save_plan(result.plan, tmp / PLAN_FILE)
        if tokenizer is not None:
            for fname, data in tokenizer_files(tokenizer, refresh=True).items():
                if fname in (WEIGHTS_FILE, CONFIG_FILE, PLAN_FILE, MANIFEST_FILE):
                    raise PressoError(f"tokenizer: its file {fname!r} would overwrite presso's own; allowed: a standard tokenizer")
                target = tmp / fname
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
        files = {}
        for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
            rel = path.relative_to(tmp).as_posix()
            files[rel] = (path.stat().st_size, _sha256(path))
        text = manifest_text(auto_class_name(model), type(model).__name__, files, tokenizer is not None)
        (tmp / MANIFEST_FILE).write_text(text, encoding="utf-8")
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    sizes = {p.relative_to(out).as_posix(): p.stat().st_size for p in out.rglob("*") if p.is_file()}
    return SavedReport(path=out, predicted_bytes=predicted.total_bytes, on_disk_bytes=sum(sizes.values()),
                       files=sizes, size=predicted)


def _read_manifest(path: Path) -> dict:
    manifest_path = path / MANIFEST_FILE
    if not path.is_dir():
        raise PressoError(f"compressed model: {str(path)!r} is not a directory")
    if not manifest_path.is_file():
        raise PressoError(f"compressed model: {MANIFEST_FILE} is missing in {str(path)!r}; not a presso directory or incomplete")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PressoError(f"compressed model: {MANIFEST_FILE} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise PressoError(f"compressed model: {MANIFEST_FILE} has no 'files' table")
    if manifest.get("presso_format") != FORMAT_VERSION:
        raise PressoError(f"compressed model: {MANIFEST_FILE} presso_format={manifest.get('presso_format')!r}; "
                          f"this Presso reads format {FORMAT_VERSION}")
    if manifest.get("auto_class") not in _AUTO_CLASSES:
        raise PressoError(f"compressed model: {MANIFEST_FILE} auto_class={manifest.get('auto_class')!r}; "
                          f"allowed: {list(_AUTO_CLASSES)}")
    for required in (WEIGHTS_FILE, CONFIG_FILE, PLAN_FILE):
        if required not in manifest["files"]:
            raise PressoError(f"compressed model: {MANIFEST_FILE} does not list {required}")
    for fname, entry in manifest["files"].items():
        file = (path / fname).resolve()
        if path.resolve() not in file.parents:
            raise PressoError(f"compressed model: {MANIFEST_FILE} lists {fname!r} outside the directory")
        if not file.is_file():
            raise PressoError(f"compressed model: {fname} is missing (listed in {MANIFEST_FILE})")
        if file.stat().st_size != entry.get("bytes") or _sha256(file) != entry.get("sha256"):
            raise PressoError(f"compressed model: {fname} does not match its sha256 checksum in {MANIFEST_FILE}; "
                              "the file was modified or is incomplete")
    return manifest


def _skip_init():
    """transformers' context that skips random weight init (its location moved in v5)."""
    import contextlib

    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:
            return contextlib.nullcontext()
    return no_init_weights()


def _torch_dtype(name) -> torch.dtype:
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise PressoError(f"compressed model: {WEIGHTS_FILE} metadata dtype={name!r} is not a torch dtype")
    return dtype


def _rebuild_weight(layout: dict, stored: dict[str, torch.Tensor], device) -> torch.Tensor:
    """Reconstruct one compressed module's weight from its stored tensors (same routine as in memory)."""
    prefix, (out_f, in_f) = layout["prefix"], layout["shape"]
    dtype = _torch_dtype(layout["dtype"])
    w = f"{prefix}.weight"
    numel = out_f * in_f
    sparse = layout["encoding"] == "sparse"
    mask = unpack_bits(stored.pop(f"{w}.mask"), 1, numel).bool().reshape(out_f, in_f) if sparse else None
    bits = layout["bits"]
    if bits is None:
        if not sparse:
            return stored.pop(w).to(dtype)
        weight = torch.zeros(out_f, in_f, dtype=dtype, device=device)
        weight[mask] = stored.pop(f"{w}.values").to(dtype)
        return weight
    g = layout["group_size"]
    scales = stored.pop(f"{w}.scales")
    groups = scales.shape[1]
    if layout.get("zero_kind", "int") == "float":  # w = code * scale + min; pruned slots come from the mask
        codes = torch.zeros(out_f, in_f, dtype=torch.uint8, device=device)
        if sparse:
            codes[mask] = unpack_bits(stored.pop(f"{w}.codes"), bits, layout["kept"])
        else:
            codes = unpack_bits(stored.pop(f"{w}.codes"), bits, numel).reshape(out_f, in_f)
        return dequantize_layout(codes, scales, None, stored.pop(f"{w}.mins"), bits, g, False, dtype, mask)
    zeros = None if layout["symmetric"] else unpack_bits(stored.pop(f"{w}.zeros"), bits, out_f * groups).reshape(out_f, groups)
    if sparse:
        codes = zero_codes(zeros, bits, (out_f, in_f), g, device)
        codes[mask] = unpack_bits(stored.pop(f"{w}.codes"), bits, layout["kept"])
    else:
        codes = unpack_bits(stored.pop(f"{w}.codes"), bits, numel).reshape(out_f, in_f)
    return dequantize(codes, scales, zeros, bits, g, dtype)


def load_compressed(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedCompressed:
    """Load a directory written by :func:`save_compressed` into a working transformers model.

    Every file's sha256 is checked against the manifest first. The model class comes from
    the manifest (``AutoModelForCausalLM`` or ``AutoModel``, never remote code); adapters are
    re-injected with their ranks and the quantized weights rebuilt with the same
    dequantization routine as in memory, so outputs equal the saved model's exactly.

    Args:
        path: the directory.
        device: where to build the model.

    Returns:
        ``LoadedCompressed(model, tokenizer, plan)``; ``tokenizer`` is ``None`` when none was saved.

    Raises:
        PressoError: the directory is missing, incomplete or tampered with (names the file).

    Example::

        model, tokenizer, plan = load_compressed("out/model-4bit")
    """
    import transformers
    from safetensors import safe_open
    from safetensors.torch import load_file

    from presso.plan import load_plan

    path = Path(path)
    manifest = _read_manifest(path)
    device = torch.device(device)
    weights_path = str(path / WEIGHTS_FILE)
    with safe_open(weights_path, framework="pt") as handle:
        raw = (handle.metadata() or {}).get(META_KEY)
    if raw is None:
        raise PressoError(f"compressed model: {WEIGHTS_FILE} has no '{META_KEY}' metadata; not written by presso")
    meta = json.loads(raw)
    try:
        config = transformers.AutoConfig.from_pretrained(str(path), trust_remote_code=False, local_files_only=True)
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PressoError(f"compressed model: {CONFIG_FILE} cannot be loaded without remote code: {first}") from None
    auto_cls = getattr(transformers, manifest["auto_class"])
    with _skip_init():  # every parameter is loaded below (checked), so random init is wasted time
        model = auto_cls.from_config(config, trust_remote_code=False)
    if type(model).__name__ != manifest.get("model_class"):
        raise PressoError(f"compressed model: config.json builds {type(model).__name__}, "
                          f"manifest says {manifest.get('model_class')!r}")
    dtype = _torch_dtype(meta.get("dtype", "float32"))
    model.to(device=device, dtype=dtype).eval()
    adapters = {name: (int(a["rank"]), float(a["alpha"])) for name, a in meta["adapters"].items()}
    inject_adapters(model, adapters, seed=0)
    stored = load_file(weights_path, device=str(device))
    state = {}
    for layout in meta["modules"].values():
        state[f"{layout['prefix']}.weight"] = _rebuild_weight(layout, stored, device)
    state.update(stored)
    missing, unexpected = model.load_state_dict(state, strict=False)
    aliases = meta.get("aliases", {})
    still_missing = [k for k in missing if k not in aliases]
    if still_missing or unexpected:
        raise PressoError(f"compressed model: {WEIGHTS_FILE} does not fit {type(model).__name__} "
                          f"(missing {still_missing[:3]}, unexpected {list(unexpected)[:3]})")
    if aliases:
        model.tie_weights()
    current = model.state_dict(keep_vars=True)
    for alias, target in aliases.items():
        if current[alias].data_ptr() != current[target].data_ptr():  # not tied by the model class: copy
            current[alias].data.copy_(current[target].data)
    setattr(model, _COMPRESSED_FLAG, True)
    tokenizer = None
    if manifest.get("tokenizer"):
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    plan = load_plan(path / PLAN_FILE)
    return LoadedCompressed(model, tokenizer, plan)
