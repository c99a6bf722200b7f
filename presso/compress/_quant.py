"""Round-to-nearest weight quantization with real integer codes.

A weight ``[out, in]`` is split into groups of ``group_size`` consecutive inputs per output
row (``group_size == 0``: one group per row). Each group stores an fp16 scale and, when
asymmetric, an integer zero point of the same width as the codes:

* asymmetric: range ``[min(w.min(), 0), max(w.max(), 0)]``, ``scale = range / (2**b - 1)``,
  ``zero = round(-lo / scale)``, ``code = clamp(round(w / scale) + zero, 0, 2**b - 1)``;
* symmetric: ``scale = max|w| / (2**(b-1) - 1)``, implicit zero point ``2**(b-1)``, codes in
  ``[1, 2**b - 1]``.

Because 0 always lies inside the range, a pruned (zero) weight gets ``code == zero`` and
dequantizes to exactly 0. :func:`dequantize` is the ONE function that turns codes back
into weights, used in memory and after loading, so both give bit-identical tensors.
"""

from __future__ import annotations

import torch

_FP16_MAX = 65504.0
_FP16_TINY = 2.0**-24  # smallest positive fp16 (subnormal)


def n_groups(in_features: int, group_size: int) -> int:
    return 1 if group_size == 0 else in_features // group_size


def _grouped(weight: torch.Tensor, group_size: int) -> torch.Tensor:
    out_f, in_f = weight.shape
    g = in_f if group_size == 0 else group_size
    return weight.reshape(out_f, in_f // g, g)


def _to_fp16_scale(scale: torch.Tensor) -> torch.Tensor:
    """Store scales as fp16, rounded up so that no in-range weight is clipped by the rounding."""
    scale = scale.clamp(min=_FP16_TINY, max=_FP16_MAX)
    s16 = scale.to(torch.float16)
    low = s16.to(torch.float32) < scale
    # For positive finite fp16 values, bit pattern + 1 is the next larger value (device-agnostic nextafter).
    bumped = (s16.view(torch.int16) + 1).view(torch.float16)
    return torch.where(low, bumped, s16)


@torch.no_grad()
def quantize(
    weight: torch.Tensor, bits: int, group_size: int, symmetric: bool, *, work: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Quantize a 2-D weight to integer codes.

    Args:
        weight: ``[out, in]`` floating tensor (any device); ``group_size`` must divide ``in``.
        bits: code width, 2 to 8.
        group_size: inputs per group, or 0 for one group per output row.
        symmetric: symmetric codes with an implicit zero point instead of min/max.
        work: optional float32 ``[out, in]`` buffer; on return it holds the codes as floats
            (pass it to :func:`dequantize` as ``work`` to skip a conversion).

    Returns:
        ``(codes, scales, zeros)``: ``uint8 [out, in]`` codes, ``float16 [out, groups]``
        scales and ``uint8 [out, groups]`` zero points (``None`` when symmetric).
    """
    w = _grouped(weight.detach().to(torch.float32), group_size)
    q = torch.empty_like(w) if work is None else _grouped(work, group_size)
    qmax = (1 << bits) - 1
    if symmetric:
        half = 1 << (bits - 1)
        absmax = w.abs().amax(dim=-1)
        scales = _to_fp16_scale(absmax / (half - 1))
        torch.div(w, scales.to(torch.float32).unsqueeze(-1), out=q)
        q.round_().clamp_(-(half - 1), half - 1).add_(half)
        return q.to(torch.uint8).reshape(weight.shape), scales, None
    # NOTE: amin + amax is several times faster than aminmax over short (group) rows on CPU.
    lo, hi = w.amin(dim=-1), w.amax(dim=-1)
    lo.clamp_(max=0.0)
    hi.clamp_(min=0.0)
    scales = _to_fp16_scale((hi - lo) / qmax)
    s = scales.to(torch.float32)
    zeros = torch.round(-lo / s).clamp_(0, qmax)
    torch.div(w, s.unsqueeze(-1), out=q)
    q.round_().add_(zeros.unsqueeze(-1)).clamp_(0, qmax)
    return q.to(torch.uint8).reshape(weight.shape), scales, zeros.to(torch.uint8)


def dequantize(
    codes: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    bits: int,
    group_size: int,
    dtype: torch.dtype = torch.float32,
    *,
    work: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weights from codes: ``(code - zero) * scale`` in fp32, then cast to ``dtype``.

    The single dequantization routine (in memory and after loading). ``zeros=None`` means
    symmetric codes with the implicit zero point ``2**(bits-1)``. ``work``, when given, must
    hold ``codes`` as float32 (as :func:`quantize` leaves it) and is overwritten; the result
    is the same to the bit, since the arithmetic is identical.
    """
    c = _grouped(codes.to(torch.float32, copy=True) if work is None else work, group_size)
    if zeros is None:
        c.sub_(float(1 << (bits - 1)))
    else:
        c.sub_(zeros.to(torch.float32).unsqueeze(-1))
    c.mul_(scales.to(torch.float32).unsqueeze(-1))
    return c.reshape(codes.shape).to(dtype)


def zero_codes(zeros: torch.Tensor | None, bits: int, shape: tuple[int, int], group_size: int, device) -> torch.Tensor:
    """The code of an exact 0 at every position of a ``shape`` weight (fills pruned slots on load)."""
    out_f, in_f = shape
    if zeros is None:
        return torch.full(shape, 1 << (bits - 1), dtype=torch.uint8, device=device)
    g = in_f if group_size == 0 else group_size
    return zeros.to(device).repeat_interleave(g, dim=1).reshape(out_f, in_f).contiguous()
