"""Estimates without compressing: the bytes a weight takes as stored under a layer config, and
the activation-weighted error pruning or quantizing it would leave. The warm start ranks every
choice of every unit with them, before any trial runs."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from presso.compress._calibration import CalibrationStats
from presso.compress._compress import CompressedModule
from presso.compress._formats import dequantize_rows, quantize_rows, row_nbytes
from presso.compress._ggml_gptq import gptq_blocks
from presso.compress._prune import mask_from_ranks, prune_mask
from presso.compress._size import module_specs, unique_state
from presso.compress.quantizers import LayerCache, get_quantizer
from presso.errors import PressoError
from presso.plan import LayerConfig, PruneCriterion, QuantConfig, SparsityConfig


def stored_weight_bytes(config: LayerConfig, shape: tuple[int, int], dtype: torch.dtype,
                        criterion: PruneCriterion) -> int:
    """Exact bytes a ``shape`` weight takes as stored under ``config`` (the layout
    :func:`save_compressed` writes; codes and masks are never computed).

    Example::

        stored_weight_bytes(LayerConfig(quant=QuantConfig(bits=4, group_size=32)), (64, 64),
                            torch.float32, PruneCriterion.WANDA)
    """
    out_f, in_f = shape
    if config.quant.format is not None:  # ggml stores whole rows of blocks; pruned zeros save nothing
        return out_f * row_nbytes(config.quant.format, in_f)
    numel = out_f * in_f
    kept, mask = numel, None
    if config.sparsity.active:
        mask = torch.empty(0)  # only "pruned or not" matters to the layout
        if config.sparsity.n_m is not None:
            n, m = config.sparsity.n_m
            kept = numel // m * n
        elif criterion is PruneCriterion.WANDA:
            kept = out_f * (in_f - round(config.sparsity.amount * in_f))
        else:
            kept = numel - round(config.sparsity.amount * numel)
    q = config.quant
    # The same record compress_ fills in, without its tensors: module_specs is the one size rule.
    rec = CompressedModule(name="w", config=config, shape=shape, dtype=dtype, bits=q.bits if q.active else None,
                           group_size=q.group_size, symmetric=q.symmetric, mask=mask, n_kept=kept, method=q.method)
    return sum(spec.nbytes for _, spec in module_specs(rec, "w"))


@dataclass
class WeightErrors:
    """Activation-weighted squared errors ``sum_ij (W - W_hat)_ij^2 * ||X_j||^2`` summed over modules.

    Attributes:
        prune: per sparsity asked for, the error of pruning alone (0 for an inactive one).
        quant: per quant config asked for, the error of quantizing alone (0 for an inactive one
            or one whose group size does not divide a module's inputs).
        dense: the same sum over the dense weights (``sum W^2 ||X||^2``; through the Hessian where
            quantization errors are), to make them relative.
    """

    prune: list[float]
    quant: list[float]
    dense: float


@torch.no_grad()
def weighted_errors(modules: dict, stats: CalibrationStats, sparsities: list[SparsityConfig],
                    quants: list[QuantConfig], criterion: PruneCriterion, cache: LayerCache | None = None
                    ) -> WeightErrors:
    """The Wanda/OBS proxy of the output error each sparsity and each quant config would cause in
    ``modules`` (``{name: module}``), pruned as :func:`compress_` prunes and quantized by the
    registered quantizer of each config's method (with the layer statistics it would get), or
    by ggml for a config with a ``format`` (see :func:`format_errors`).

    Where ``stats`` hold a module's input Hessian, its quantization errors are output errors
    ``sum_r dW_r H dW_r^T`` (so is ``dense``), as in :func:`format_errors` and for its reason. Pruning
    errors stay the diagonal proxy; compare errors within one technique (the warm start scales
    techniques apart). A module without input statistics (an embedding table) weights its
    columns equally.

    ``cache``: a :class:`~presso.compress.quantizers.LayerCache`; layers quantized by methods other
    than ``rtn`` are looked up and stored there under the key :func:`compress_` uses, so a trial
    of the same choice reuses them.
    """
    prune_err = [0.0] * len(sparsities)
    quant_err = [0.0] * len(quants)
    dense = 0.0
    wanda = criterion is PruneCriterion.WANDA
    formats = [(i, q) for i, q in enumerate(quants) if q.format is not None]
    for name, module in modules.items():
        w = module.weight.detach().to(torch.float32)
        norms = stats.sq_norms[name].to(w.device, torch.float32).unsqueeze(0) if name in stats.sq_norms \
            else torch.ones(1, w.shape[1], device=w.device)
        w2n = w.pow(2).mul_(norms)
        hessian = stats.hessians.get(name) if stats.hessians is not None else None
        if hessian is not None:
            hessian = hessian.to(w.device, torch.float32)
        if formats:  # the reference in the formats' own measure (the warm start scales each technique apart)
            module_dense, errors = format_errors(name, module.weight, stats, [q for _, q in formats])
            for (i, _), err in zip(formats, errors):
                quant_err[i] += err
            dense += module_dense
        else:
            dense += float(w2n.sum()) if hessian is None else _output_error(w, hessian)
        for i, sp in enumerate(sparsities):
            if not sp.active:
                continue
            ranks = stats.row_ranks(name, module.weight) if wanda and sp.n_m is None else None
            if ranks is not None:
                keep = mask_from_ranks(ranks, sp.amount)[0]
            else:
                keep = prune_mask(w, sp.amount, sp.n_m, stats.sq_norms[name] if wanda else None)
            prune_err[i] += float(w2n[~keep].sum())
        for i, q in enumerate(quants):
            if not q.active or q.format is not None or (q.group_size and w.shape[1] % q.group_size):
                continue
            diff = _quantized(name, module.weight, q, stats, criterion, cache).dequantize().sub_(w)
            quant_err[i] += float(diff.pow_(2).mul_(norms).sum()) if hessian is None else _output_error(diff, hessian)
    return WeightErrors(prune=prune_err, quant=quant_err, dense=dense)


def _output_error(delta: torch.Tensor, hessian: torch.Tensor) -> float:
    """``sum_r delta_r H delta_r^T``: the squared output error over the calibration inputs."""
    return float(((delta @ hessian) * delta).sum())


def _quantized(name, weight, q: QuantConfig, stats: CalibrationStats, criterion, cache: LayerCache | None):
    """``weight`` quantized under ``q`` alone as :func:`compress_` quantizes it (through ``cache``)."""
    w = weight.detach().to(torch.float32)
    layer = stats.layer_stats(name) if name in stats.sq_norms else None  # what compress_ hands the handler
    if q.method == "rtn" or cache is None:  # compress_ caches no rtn layer: it costs less than a lookup
        return get_quantizer(q.method).quantize(w, q, layer)
    key = LayerCache.key(name, LayerConfig(quant=q), criterion)
    layout = cache.get(key, weight)
    if layout is None:
        layout = get_quantizer(q.method).quantize(w, q, layer)
        cache.put(key, weight, layout)
    return layout


SAMPLED_ROWS = 256
"""Rows of a weight :func:`format_errors` quantizes: ggml quantizes rows independently (and GPTQ,
given the layer's Hessian, too), so an even sample of rows estimates the whole weight's error
without quantizing a 49,152-row embedding table six times."""


@torch.no_grad()
def format_errors(name: str, weight: torch.Tensor, stats: CalibrationStats,
                  quants: list[QuantConfig]) -> tuple[float, list[float]]:
    """``(dense, [error per config])`` of one weight stored in ggml formats, quantized as
    :func:`compress_` does (ggml with the importance matrix, then GPTQ inside the blocks for
    ``method: gptq``) on :data:`SAMPLED_ROWS` evenly spaced rows and scaled to all rows.

    With the layer's input Hessian ``H = X^T X`` the error is the output error
    ``sum_r dW_r H dW_r^T`` and ``dense`` is ``sum_r W_r H W_r^T``; the diagonal proxy
    ``sum dW^2 ||X_j||^2`` would credit GPTQ nothing, since GPTQ trades a larger weight error
    for correlated errors that cancel in the output. Without a Hessian, the diagonal proxy
    (columns weighted equally when the module has no input statistics: an embedding table).
    """
    out_f, in_f = weight.shape
    rows = torch.linspace(0, out_f - 1, min(out_f, SAMPLED_ROWS)).round().long().unique()
    w = weight.detach()[rows].to(torch.float32)
    scale = out_f / len(rows)
    hessian = stats.hessians.get(name) if stats.hessians is not None else None
    sq_norms = stats.sq_norms.get(name)
    importance = sq_norms / max(stats.n_tokens, 1) if sq_norms is not None else None
    if hessian is not None:
        hessian = hessian.to(w.device, torch.float32)

        def measure(delta):
            return float(((delta @ hessian) * delta).sum()) * scale
    else:
        norms = sq_norms.to(w.device, torch.float32) if sq_norms is not None else torch.ones(in_f, device=w.device)

        def measure(delta):
            return float(delta.pow(2).mul_(norms).sum()) * scale

    errors = []
    for q in quants:
        packed = quantize_rows(w, q.format, importance)
        if q.method == "gptq":
            if hessian is None:
                raise PressoError(f"quant.method: 'gptq' for {name!r} needs the layer's input Hessian; none was collected")
            packed = gptq_blocks(w, packed, q.format, hessian, act_order=get_quantizer("gptq").act_order)
        errors.append(measure(dequantize_rows(packed, q.format) - w))
    return measure(w), errors


def adapter_free_nbytes(model) -> int:
    """:func:`dense_nbytes` without LoRA adapter tensors (``.lora_`` in their names)."""
    unique, _ = unique_state(model)
    return sum(t.numel() * t.element_size() for k, t in unique.items() if ".lora_" not in k)


def fixed_nbytes(model, modules: dict) -> int:
    """Bytes of everything but the weights of ``modules`` (``{name: module}``, the ones a space
    compresses): what a plan leaves as it is."""
    own = {id(m.weight) for m in modules.values()}
    return adapter_free_nbytes(model) - sum(m.weight.numel() * m.weight.element_size() for m in modules.values()
                                            if id(m.weight) in own)
