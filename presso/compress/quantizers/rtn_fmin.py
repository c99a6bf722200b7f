"""``rtn_fmin``: round-to-nearest with an fp16 group minimum (GGUF Q4_1/Q5_1, HQQ's layout).

``w = code * scale + min`` with ``min = fp16(min w)`` and ``scale = fp16((max w - min) / (2**b - 1))``
rounded up. The range is the group's own (it need not contain 0), so a one-signed group wastes
no levels; it costs 16 bits per group for the minimum instead of ``bits`` for an integer zero
point. Symmetric is meaningless here and ignored (the layout is always asymmetric).
"""

from __future__ import annotations

import torch

from presso.compress.quantizers._base import QuantLayout, Quantizer, fp16_scale
from presso.compress.quantizers._registry import register_quantizer


@register_quantizer
class RTNFloatMin(Quantizer):
    name = "rtn_fmin"
    zero_kind = "float"
    needs = "none"

    @torch.no_grad()
    def quantize(self, weight, quant, stats=None, mask=None) -> QuantLayout:
        out_f, in_f = weight.shape
        g = in_f if quant.group_size == 0 else quant.group_size
        w = weight.detach().to(torch.float32).reshape(out_f, in_f // g, g)
        if mask is not None:
            # Pruned slots are restored by the mask: only the kept weights set the range.
            m = mask.reshape(w.shape)
            lo = torch.where(m, w, torch.inf).amin(-1)
            hi = torch.where(m, w, -torch.inf).amax(-1)
            empty = ~m.any(-1)
            lo, hi = lo.masked_fill(empty, 0.0), hi.masked_fill(empty, 0.0)
        else:
            lo, hi = w.amin(-1), w.amax(-1)
        qmax = (1 << quant.bits) - 1
        mins = lo.clamp(-65504.0, 65504.0).to(torch.float16)
        m32 = mins.to(torch.float32)
        # The fp16 minimum may round above the true one; the scale covers [min16, hi] either way.
        scales = fp16_scale((hi - m32).clamp(min=0.0) / qmax)
        q = torch.round((w - m32.unsqueeze(-1)) / scales.to(torch.float32).unsqueeze(-1)).clamp_(0, qmax)
        codes = q.to(torch.uint8).reshape(out_f, in_f)
        return QuantLayout(codes, scales, None, mins, quant.bits, quant.group_size, False)
