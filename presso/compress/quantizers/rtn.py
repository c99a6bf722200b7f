"""``rtn``: round-to-nearest with an integer zero point (Presso's original quantizer, unchanged)."""

from __future__ import annotations

from presso.compress._quant import quantize
from presso.compress.quantizers._base import QuantLayout, Quantizer
from presso.compress.quantizers._registry import register_quantizer


@register_quantizer
class RTN(Quantizer):
    """Min/max (or absmax) range per group, codes rounded to nearest; needs no calibration."""

    name = "rtn"
    zero_kind = "int"
    needs = "none"

    def quantize(self, weight, quant, stats=None, mask=None, *, work=None) -> QuantLayout:
        codes, scales, zeros = quantize(weight, quant.bits, quant.group_size, quant.symmetric, work=work)
        return QuantLayout(codes, scales, zeros, None, quant.bits, quant.group_size, quant.symmetric)
