"""The quantizer interface: a handler turns one weight into a stored layout.

Lifecycle: :func:`compress_` looks the plan's ``quant.method`` up in the registry
(:func:`get_quantizer`), hands the handler the (already pruned) weight, its keep-mask and
the layer's calibration statistics, and stores the returned :class:`QuantLayout`. The
model's weight is then overwritten with ``layout.dequantize()`` (fake quantization), so
the model in memory, the size accounting and the saved file all read the same layout.

Two layouts exist ("zero kinds"):

* ``"int"``: ``w = (code - zero) * scale`` with an integer zero point of ``bits`` bits
  (or the implicit ``2**(bits-1)`` when symmetric). Exact 0 is on the grid, so pruned
  weights stay exactly 0. ``rtn``, ``imatrix`` and ``gptq`` store this layout, which is
  why their codes are storable in every target that stores RTN codes.
* ``"float"``: ``w = code * scale + min`` with an fp16 group minimum (GGUF Q4_1/Q5_1,
  HQQ). Exact 0 need not be on the grid, so pruned weights are restored by the mask.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from presso.compress._quant import dequantize as _int_dequantize
from presso.compress._quant import n_groups
from presso.compress._pack import packed_nbytes

ZERO_KINDS = ("int", "float")


@dataclass
class LayerStats:
    """Calibration statistics of one layer's input, collected once per worker.

    Attributes:
        sq_norms: ``float32 [in]``, ``sum_t x_tj**2`` (the Wanda statistics), or ``None``.
        hessian: ``float32 [in, in]``, ``sum_t x_t x_t^T`` (``X^T X``), or ``None``.
        n_tokens: calibration tokens the sums ran over.
    """

    sq_norms: torch.Tensor | None = None
    hessian: torch.Tensor | None = None
    n_tokens: int = 0


@dataclass
class QuantLayout:
    """The tensors stored for one quantized weight.

    Attributes:
        codes: ``uint8 [out, in]`` unpacked codes.
        scales: ``float16 [out, groups]``.
        zeros: ``uint8 [out, groups]`` integer zero points (``"int"`` layout, asymmetric), else ``None``.
        mins: ``float16 [out, groups]`` group minimums (``"float"`` layout), else ``None``.
        bits: code width.
        group_size: inputs per group (0 = one group per output row).
        symmetric: implicit zero point ``2**(bits-1)`` (``"int"`` layout only).
        extras: any further tensors kept with the layout (SparseGPT's joint GPTQ layers keep their
            keep-mask here, so a cached entry restores the mask too; nothing here is stored on disk).
    """

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor | None
    mins: torch.Tensor | None
    bits: int
    group_size: int
    symmetric: bool
    extras: dict | None = None

    @property
    def zero_kind(self) -> str:
        return "float" if self.mins is not None else "int"

    def dequantize(self, dtype: torch.dtype = torch.float32, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The weight this layout stores (``mask`` zeroes pruned slots of a float-min layout)."""
        return dequantize_layout(self.codes, self.scales, self.zeros, self.mins, self.bits, self.group_size,
                                 self.symmetric, dtype, mask)

    def nbytes(self, n_codes: int | None = None) -> dict[str, int]:
        """Exact stored bytes by kind (``codes`` packed to ``bits``; ``n_codes`` for a sparse encoding)."""
        out_f, in_f = self.codes.shape
        return layout_nbytes(out_f, in_f, self.bits, self.group_size, self.symmetric, self.zero_kind,
                             out_f * in_f if n_codes is None else n_codes)


def layout_nbytes(out_f: int, in_f: int, bits: int, group_size: int, symmetric: bool, zero_kind: str,
                  n_codes: int) -> dict[str, int]:
    """Exact bytes of a layout by kind: ``codes``, ``scales``, ``zeros`` (zero points or minimums)."""
    groups = out_f * n_groups(in_f, group_size)
    sizes = {"codes": packed_nbytes(n_codes, bits), "scales": 2 * groups}
    if zero_kind == "float":
        sizes["zeros"] = 2 * groups  # fp16 minimums
    elif not symmetric:
        sizes["zeros"] = packed_nbytes(groups, bits)
    return sizes


def dequantize_layout(codes, scales, zeros, mins, bits, group_size, symmetric, dtype=torch.float32, mask=None):
    """The one dequantization routine for every layout (in memory and after loading)."""
    if mins is None:
        return _int_dequantize(codes, scales, None if symmetric else zeros, bits, group_size, dtype)
    out_f, in_f = codes.shape
    g = in_f if group_size == 0 else group_size
    c = codes.to(torch.float32).reshape(out_f, in_f // g, g)
    c.mul_(scales.to(torch.float32).unsqueeze(-1)).add_(mins.to(torch.float32).unsqueeze(-1))
    w = c.reshape(out_f, in_f)
    if mask is not None:
        w.mul_(mask)
    return w.to(dtype)


class Quantizer(ABC):
    """A quantization method: how weights round onto a layout's grid.

    Subclasses set ``name`` (the plan's ``quant.method``), ``zero_kind`` and ``needs``
    (``"none"``, ``"norms"``: the Wanda squared input norms, or ``"hessian"``: ``X^T X``)
    and implement :meth:`quantize`. Register them with :func:`register_quantizer`.
    """

    name: str = ""
    zero_kind: str = "int"
    needs: str = "none"

    @abstractmethod
    def quantize(self, weight: torch.Tensor, quant, stats: LayerStats | None = None,
                 mask: torch.Tensor | None = None) -> QuantLayout:
        """Quantize a 2-D weight.

        Args:
            weight: ``[out, in]`` float tensor (already pruned; not modified).
            quant: the layer's :class:`~presso.plan.QuantConfig` (bits, group size, symmetry).
            stats: the layer's calibration statistics; ``None`` for an embedding table, or when
                the method needs none (a method that needs them falls back to uniform weights).
            mask: ``bool [out, in]`` keep-mask when pruned; pruned weights must dequantize to 0.

        Returns:
            The stored :class:`QuantLayout`.
        """

    def dequantize(self, layout: QuantLayout, dtype: torch.dtype = torch.float32, mask=None) -> torch.Tensor:
        return layout.dequantize(dtype, mask)


def fp16_scale(scale: torch.Tensor) -> torch.Tensor:
    """fp16 scales rounded up (no in-range weight clipped), as RTN stores them."""
    from presso.compress._quant import _to_fp16_scale

    return _to_fp16_scale(scale)


def int_params(w: torch.Tensor, bits: int, symmetric: bool, shrink_lo=1.0, shrink_hi=1.0):
    """RTN's scale and zero point of grouped weights ``w [..., g]`` (ranges optionally shrunk).

    With no shrink this is exactly the arithmetic of :func:`presso.compress._quant.quantize`.
    Returns ``(scales fp16, zeros float32)``; zeros are the implicit ``2**(bits-1)`` when symmetric.
    """
    qmax = (1 << bits) - 1
    if symmetric:
        half = 1 << (bits - 1)
        scales = fp16_scale(w.abs().amax(dim=-1) * shrink_hi / (half - 1))
        return scales, torch.full_like(scales, float(half), dtype=torch.float32)
    # NOTE: x * 1.0 is exact, so the unshrunk range is RTN's to the bit.
    lo = w.amin(dim=-1).clamp(max=0.0) * shrink_lo
    hi = w.amax(dim=-1).clamp(min=0.0) * shrink_hi
    scales = fp16_scale((hi - lo) / qmax)
    zeros = torch.round(-lo / scales.to(torch.float32)).clamp_(0, qmax)
    return scales, zeros


def int_round(w: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int, symmetric: bool) -> torch.Tensor:
    """Codes (as float32) of ``w [..., g]`` on the grid ``(scales, zeros) [...]``."""
    qmax = (1 << bits) - 1
    q = torch.round(w / scales.to(torch.float32).unsqueeze(-1))
    if symmetric:
        half = 1 << (bits - 1)
        return q.clamp_(-(half - 1), half - 1).add_(half)
    return q.add_(zeros.unsqueeze(-1)).clamp_(0, qmax)
