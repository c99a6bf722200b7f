"""``compress_``: apply a :class:`~presso.plan.Plan` to a model in place."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from presso.compress._adapters import inject_adapters, recover_
from presso.compress._calibration import CalibrationStats, TeacherCache
from presso.compress._formats import FORMATS, FormatCache, block_size, dequantize_rows, fits, quantize_rows
from presso.compress._ggml_gptq import gptq_blocks
from presso.compress._modules import compressible_modules, embedding_modules, target_modules
from presso.compress._prune import mask_from_ranks, prune_mask
from presso.compress._quant import dequantize, quantize
from presso.compress._size import SizeReport, predict_size
from presso.compress.quantizers import LayerCache, get_quantizer
from presso.errors import PressoError
from presso.plan import LayerConfig, Plan, PruneCriterion

_COMPRESSED_FLAG = "_presso_compressed"


def mark_dense(model: nn.Module) -> None:
    """Forget that ``model`` was compressed, so :func:`compress_` accepts it again.

    Only for a caller that has put every compressed weight back to its dense value (the
    evaluator restores its one working copy per trial instead of deep-copying the model).
    """
    if getattr(model, _COMPRESSED_FLAG, False):
        delattr(model, _COMPRESSED_FLAG)


@dataclass
class CompressedModule:
    """What was done to one Linear, with the integer tensors needed to store it.

    Attributes:
        name: the module's fully qualified name.
        config: the layer config applied.
        shape: ``(out_features, in_features)``.
        dtype: the weight's dtype.
        bits: code width, or ``None`` when the weight is not quantized.
        group_size: inputs per quantization group (0 = per output channel).
        symmetric: symmetric codes (no stored zero points).
        mask: ``bool [out, in]`` keep-mask when pruned, else ``None``.
        codes: ``uint8 [out, in]`` unpacked codes when quantized (packing happens on save).
        scales: ``float16 [out, groups]`` when quantized.
        zeros: ``uint8 [out, groups]`` integer zero points when quantized asymmetrically on
            the ``"int"`` grid (methods rtn, imatrix, gptq), else ``None``.
        n_kept: weights not pruned.
        format: the ggml block format when the layer names one (then ``bits`` is ``None``).
        packed: ``uint8 [out, row bytes]`` ggml blocks of a ``format`` layer, as a GGUF stores them.
        method: the quantization method (``quant.method``) that produced the codes.
        mins: ``float16 [out, groups]`` group minimums of the ``"float"`` grid (method
            ``rtn_fmin``: ``w = code * scale + min``), else ``None``.
    """

    name: str
    config: LayerConfig
    shape: tuple[int, int]
    dtype: torch.dtype
    bits: int | None = None
    group_size: int = 0
    symmetric: bool = False
    mask: torch.Tensor | None = None
    codes: torch.Tensor | None = None
    scales: torch.Tensor | None = None
    zeros: torch.Tensor | None = None
    n_kept: int = 0
    format: str | None = None
    packed: object = None
    method: str = "rtn"
    mins: torch.Tensor | None = None

    @property
    def sparsity(self) -> float:
        """Fraction of weights pruned."""
        return 1.0 - self.n_kept / (self.shape[0] * self.shape[1])


@dataclass
class CompressionResult:
    """What :func:`compress_` did.

    Attributes:
        plan: the plan applied.
        modules: ``{fqn: CompressedModule}`` for every module the plan touched.
        adapters: ``{fqn: (rank, alpha)}`` of the LoRA adapters injected.
        timings: seconds spent in ``prune_s``, ``quant_s``, ``recovery_s`` and ``total_s``.
        recovery_losses: distillation loss at each recovery step (empty without recovery).
        size: predicted stored size (without tokenizer files; see :func:`predict_size`).
    """

    plan: Plan
    modules: dict[str, CompressedModule] = field(default_factory=dict)
    adapters: dict[str, tuple[int, float]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    recovery_losses: list[float] = field(default_factory=list)
    size: SizeReport | None = None


def _divisors(n: int) -> list[int]:
    """Common group sizes that divide ``n`` (powers of two from 8), else ``[n]``."""
    return [d for d in (8, 16, 32, 64, 128, 256) if n % d == 0] or [n]


def _apply_formats(result: CompressionResult, modules, calibration, cache: FormatCache | None) -> None:
    """Quantize every layer with a ggml format by ggml's own routine, in parallel threads.

    The layer's mean squared input activations serve as llama.cpp's importance matrix when
    calibration statistics are given (the evaluator gives them to every plan with such a format;
    embedding tables have no activations: plain ggml rounding). ggml runs without Python's lock,
    so threads quantize several layers at once.
    """
    from concurrent.futures import ThreadPoolExecutor

    jobs = [(name, rec) for name, rec in result.modules.items() if rec.config.quant.format is not None]
    if not jobs:
        return

    def run(job):
        name, rec = job
        fmt, weight = rec.config.quant.format, modules[name].weight
        method = rec.config.quant.method
        key = (name, fmt, method, rec.config.sparsity, id(calibration))
        hit = cache.get(key) if cache is not None else None
        if hit is None:
            stats = calibration.sq_norms.get(name) if calibration is not None else None
            importance = stats / max(calibration.n_tokens, 1) if stats is not None else None
            packed = quantize_rows(weight, fmt, importance)
            if method == "gptq":  # ggml's block scales, then GPTQ's rounding inside them
                mask = (weight != 0) if rec.config.sparsity.active else None
                packed = gptq_blocks(weight, packed, fmt, calibration.hessians[name], mask=mask,
                                     act_order=get_quantizer("gptq").act_order)
            restored = dequantize_rows(packed, fmt, weight.dtype).reshape(weight.shape)
            if cache is not None:
                cache.put(key, packed, restored)
        else:
            packed, restored = hit
        rec.format, rec.packed = fmt, packed
        with torch.no_grad():  # grad mode is per thread: the caller's no_grad does not reach here
            weight.copy_(restored)

    with ThreadPoolExecutor(max_workers=max(1, min(torch.get_num_threads(), len(jobs)))) as pool:
        list(pool.map(run, jobs))


def _sparsegpt_layer(name, weight, cfg, plan, calibration, cache):
    """SparseGPT on one layer: ``(keep-mask, layout, None)`` for a GPTQ layer (pruned and
    quantized in one sweep, cached like any GPTQ layer, the mask in the layout's ``extras``), or
    ``(keep-mask, None, error-updated pruned weight)`` for any other method."""
    from presso.compress._sparsegpt import sparsegpt
    from presso.compress.quantizers import QuantLayout

    q = cfg.quant
    together = q.active and q.format is None and q.method == "gptq"
    key = LayerCache.key(name, cfg, plan.criterion) if cache is not None and together else None
    layout = cache.get(key, weight) if key is not None else None
    if layout is not None:
        return layout.extras["mask"], layout, None
    out = sparsegpt(weight, calibration.hessians[name], cfg.sparsity.amount, cfg.sparsity.n_m,
                    q if together else None)
    if not together:
        return out.keep, None, out.weight.to(weight.dtype)
    layout = QuantLayout(out.codes, out.scales, out.zeros, None, q.bits, q.group_size, q.symmetric,
                         extras={"mask": out.keep})
    if key is not None:
        cache.put(key, weight, layout)
    return out.keep, layout, None


def validate_plan(model: nn.Module, plan: Plan) -> dict[str, LayerConfig]:
    """Resolve ``plan`` against ``model`` and check every layer config fits its module.

    Returns:
        ``{fqn: LayerConfig}`` for the modules the plan touches, in model order.

    Raises:
        PressoError: a key names no module, or a config does not fit (the message names the
            module, field, value and what is allowed).
    """
    if not isinstance(plan, Plan):
        raise PressoError(f"plan: got {type(plan).__name__}; allowed: a presso.plan.Plan")
    linears, embeddings = compressible_modules(model), embedding_modules(model)
    resolved = plan.resolve(linears, exact_names=embeddings)
    for name, cfg in resolved.items():
        out_f, in_f = linears[name].weight.shape if name in linears else embeddings[name].weight.shape
        where = f"plan.layers[{name!r}]"
        if name in embeddings:
            # An embedding is a lookup table: activation-aware pruning and LoRA recovery do not apply.
            if cfg.sparsity.active:
                raise PressoError(f"{where}.sparsity: got {cfg.sparsity.amount or cfg.sparsity.structure!r} on an embedding "
                                  "table; allowed: amount 0 (embeddings take quantization only)")
            if cfg.adapter.active:
                raise PressoError(f"{where}.adapter.rank: got {cfg.adapter.rank} on an embedding table; allowed: 0")
        fmt = cfg.quant.format
        if fmt is not None and in_f % block_size(fmt):
            raise PressoError(f"{where}.quant.format: got {fmt!r} (blocks of {block_size(fmt)}) for rows of {in_f} values; "
                              f"allowed: {[f for f in FORMATS if fits(f, in_f)]}")
        g = cfg.quant.group_size
        if cfg.quant.active and g and in_f % g:
            raise PressoError(
                f"{where}.quant.group_size: got {g} for in_features={in_f}; allowed: 0 (per channel) "
                f"or a divisor of {in_f} such as {_divisors(in_f)}"
            )
        n_m = cfg.sparsity.n_m
        if n_m is not None and in_f % n_m[1]:
            raise PressoError(
                f"{where}.sparsity.structure: got {cfg.sparsity.structure!r} for in_features={in_f}; "
                f"allowed: N:M with M dividing {in_f}"
            )
        if cfg.adapter.rank > min(in_f, out_f):
            raise PressoError(
                f"{where}.adapter.rank: got {cfg.adapter.rank} for a {out_f}x{in_f} layer; "
                f"allowed: 0 to {min(in_f, out_f)}"
            )
    return resolved


def _check_quant_stats(resolved, calibration, modules) -> None:
    """Methods that need calibration statistics get them (embedding tables need none: no input)."""
    for name, cfg in resolved.items():
        needs = cfg.quant.needs
        if needs == "hessian" and cfg.quant.format is not None and isinstance(modules[name], nn.Embedding):
            raise PressoError(f"plan.layers[{name!r}].quant.method: got 'gptq' with format {cfg.quant.format!r} "
                              "for an embedding table (no inputs, no Hessian); allowed: 'rtn'")
        if needs == "none" or (cfg.quant.format is not None and needs != "hessian") or isinstance(modules[name], nn.Embedding):
            continue  # a ggml format uses an importance matrix when one is given (optional, as in llama.cpp)
        where = f"plan.layers[{name!r}].quant.method"
        if calibration is None:
            flag = ", hessians=True" if needs == "hessian" else ""
            raise PressoError(f"{where}: {cfg.quant.method!r} needs calibration statistics; "
                              f"pass calibration=collect_calibration(dense_model, ids{flag})")
        if needs == "hessian" and (calibration.hessians is None or name not in calibration.hessians):
            raise PressoError(f"{where}: {cfg.quant.method!r} needs input Hessians for {name!r}; "
                              "collect them with collect_calibration(dense_model, ids, hessians=True)")


def compress_(
    model: nn.Module,
    plan: Plan,
    *,
    calibration: CalibrationStats | None = None,
    teacher: TeacherCache | None = None,
    format_cache: FormatCache | None = None,
    cache: LayerCache | None = None,
) -> CompressionResult:
    """Prune, quantize and add LoRA adapters to ``model`` in place, as ``plan`` says.

    Per module: prune (magnitude or Wanda, unstructured or N:M), then quantize the surviving
    weights with the layer's ``quant.method`` (see :mod:`presso.compress.quantizers`; pruned
    zeros stay exactly zero), then wrap the module with a
    LoRA adapter when ``adapter.rank > 0``. When ``plan.recovery.steps > 0`` the adapters are
    trained by distillation from ``teacher`` while every base weight stays frozen. The
    Linear weights afterwards hold the dequantized values (fake quantization), so the model
    runs as usual; the integer codes are kept in the result for :func:`save_compressed`.

    Args:
        model: a dense transformers model (not compressed before); any device.
        plan: the compression plan.
        calibration: activation statistics from :func:`collect_calibration` on the dense
            model; required for ``criterion: wanda`` with any sparsity and for quantization
            methods that need statistics (``imatrix``; ``gptq`` needs ``hessians=True``).
        teacher: a :class:`TeacherCache` built from the dense model; required for recovery.
        format_cache: a per-worker :class:`FormatCache` of ggml-format layers (search workers
            pass one; the dense weights must be the same model's every call).
        cache: a per-worker :class:`~presso.compress.quantizers.LayerCache`; layers quantized
            by a method other than ``rtn`` are looked up there first (``rtn`` recomputes faster
            than a cached layout dequantizes, so it is never cached).

    Returns:
        A :class:`CompressionResult` (timings, per-module codes, predicted size).

    Raises:
        PressoError: the plan does not fit the model, the model was already compressed, or
            calibration / teacher data is missing.

    Example::

        model = copy.deepcopy(dense)                      # per trial
        result = compress_(model, plan, calibration=stats, teacher=teacher)
        print(result.size.size_fraction, result.timings)
    """
    if getattr(model, _COMPRESSED_FLAG, False):
        raise PressoError("model: already compressed; allowed: a dense model (deepcopy the dense model per trial)")
    t_start = time.perf_counter()
    resolved = validate_plan(model, plan)
    modules = target_modules(model)
    wanda = plan.criterion is PruneCriterion.WANDA
    if wanda and any(c.sparsity.active for c in resolved.values()):
        if calibration is None:
            raise PressoError(
                "plan.criterion: 'wanda' needs calibration statistics; pass calibration=collect_calibration(dense_model, ids)"
            )
        for name, cfg in resolved.items():
            stats = calibration.sq_norms.get(name)
            in_f = modules[name].weight.shape[1]
            if cfg.sparsity.active and (stats is None or stats.numel() != in_f):
                raise PressoError(f"calibration: no statistics of in_features={in_f} for module {name!r}; "
                                  "collect them on the same model architecture")
    sparsegpt = plan.criterion is PruneCriterion.SPARSEGPT
    if sparsegpt:
        for name, cfg in resolved.items():
            if cfg.sparsity.active and (calibration is None or calibration.hessians is None
                                        or name not in calibration.hessians):
                raise PressoError(f"plan.criterion: 'sparsegpt' needs input Hessians for {name!r}; pass "
                                  "calibration=collect_calibration(dense_model, ids, hessians=True)")
    _check_quant_stats(resolved, calibration, modules)
    adapters = {n: (c.adapter.rank, c.adapter.effective_alpha) for n, c in resolved.items() if c.adapter.active}
    recovering = plan.recovery.steps > 0 and bool(adapters)
    if recovering and teacher is None:
        raise PressoError(
            f"plan.recovery.steps: got {plan.recovery.steps} with adapters but no teacher; "
            "pass teacher=TeacherCache.build(dense_model, ids) or set steps to 0"
        )
    result = CompressionResult(plan=plan, adapters=adapters)

    t0 = time.perf_counter()
    joint: dict = {}  # SparseGPT layers pruned and quantized in one sweep: their layouts
    with torch.no_grad():
        for name, cfg in resolved.items():
            weight = modules[name].weight
            rec = CompressedModule(name=name, config=cfg, shape=tuple(weight.shape), dtype=weight.dtype,
                                   n_kept=weight.numel())
            if cfg.sparsity.active and sparsegpt:
                rec.mask, layout, updated = _sparsegpt_layer(name, weight, cfg, plan, calibration, cache)
                rec.n_kept = int(rec.mask.sum())
                if layout is not None:
                    joint[name] = layout
                else:  # pruned only: the error-updated weight, quantized (if at all) below as usual
                    weight.copy_(updated)
            elif cfg.sparsity.active:
                ranks = calibration.row_ranks(name, weight) if wanda and cfg.sparsity.n_m is None else None
                if ranks is not None:  # the worker's cached per-row order: same mask, no selection
                    rec.mask, rec.n_kept = mask_from_ranks(ranks, cfg.sparsity.amount)
                    weight.mul_(rec.mask)
                else:
                    norms = calibration.sq_norms[name] if wanda else None
                    rec.mask = prune_mask(weight, cfg.sparsity.amount, cfg.sparsity.n_m, norms)
                    weight.mul_(rec.mask)
                    rec.n_kept = int(rec.mask.sum())
            result.modules[name] = rec
    t1 = time.perf_counter()
    with torch.no_grad():
        _apply_formats(result, modules, calibration, format_cache)
        quantized = [n for n, rec in result.modules.items() if rec.config.quant.active and rec.format is None]
        # One float32 scratch buffer, reused by every module (avoids a fresh allocation per layer).
        largest = max((modules[n].weight.numel() for n in quantized), default=0)
        scratch = {}
        for name in quantized:
            rec, q, weight = result.modules[name], result.modules[name].config.quant, modules[name].weight
            device = weight.device
            if weight.dtype == torch.float32 and weight.is_contiguous():
                # NOTE: an fp32 weight is its own work buffer: quantize turns it into codes in place
                # (each element depends only on itself and its group's scale, computed first) and
                # dequantize turns them back, the same arithmetic as with a scratch buffer.
                work = weight
            else:
                if device not in scratch:
                    scratch[device] = torch.empty(largest, dtype=torch.float32, device=device)
                work = scratch[device][: weight.numel()].view(weight.shape)
            rec.bits, rec.group_size, rec.symmetric, rec.method = q.bits, q.group_size, q.symmetric, q.method
            if q.method == "rtn":
                rec.codes, rec.scales, rec.zeros = quantize(weight, q.bits, q.group_size, q.symmetric, work=work)
                restored = dequantize(rec.codes, rec.scales, rec.zeros, q.bits, q.group_size, weight.dtype, work=work)
            else:
                key = LayerCache.key(name, rec.config, plan.criterion) if cache is not None else None
                layout = joint.get(name)
                if layout is None and cache is not None:
                    layout = cache.get(key, weight)
                if layout is None:
                    stats = calibration.layer_stats(name) if calibration is not None else None
                    layout = get_quantizer(q.method).quantize(weight, q, stats, rec.mask)
                    if cache is not None:
                        cache.put(key, weight, layout)
                rec.codes, rec.scales, rec.zeros, rec.mins = layout.codes, layout.scales, layout.zeros, layout.mins
                if layout.zero_kind == "int":
                    # NOTE: the codes go into the work buffer and are dequantized there, RTN's own last
                    # step (same arithmetic, same bits), so a cache hit costs less than an RTN layer.
                    work.copy_(layout.codes)
                    restored = dequantize(layout.codes, layout.scales, layout.zeros, q.bits, q.group_size,
                                          weight.dtype, work=work)
                else:
                    restored = layout.dequantize(weight.dtype, rec.mask)
            if restored.data_ptr() != weight.data_ptr():
                weight.copy_(restored)
        del scratch
    t2 = time.perf_counter()
    inject_adapters(model, adapters, plan.seed)
    if recovering:
        rec_cfg = plan.recovery
        result.recovery_losses = recover_(model, teacher, rec_cfg.steps, rec_cfg.lr, rec_cfg.batch_size, plan.seed)
    t3 = time.perf_counter()
    setattr(model, _COMPRESSED_FLAG, True)
    result.timings = {"prune_s": t1 - t0, "quant_s": t2 - t1, "recovery_s": t3 - t2}
    result.size = predict_size(model, result)
    result.timings["total_s"] = time.perf_counter() - t_start
    return result
