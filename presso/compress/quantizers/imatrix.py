"""``imatrix``: importance-weighted round-to-nearest (llama.cpp's importance-matrix idea).

llama.cpp (``quantize.cpp``/``ggml-quants.c``, ``make_qx_quants`` with ``quant_weights``)
chooses each block's scale by minimising ``sum_j w_j (x_j - q_j)^2`` over a small grid of
candidate scales, where ``w_j`` is the mean squared activation of input ``j`` on
calibration text. Here the grid shrinks RTN's range: both ends by one of 9 factors, or one
end alone by one of 3 (15 candidates; symmetric: the 9 absmax factors), and the weights are the
Wanda statistics Presso already collects (``sum_t x_tj**2``). The result is RTN's integer
zero-point layout, so it stores wherever RTN does; without statistics (embedding tables)
the weights are uniform, i.e. the grid minimises plain squared error.
"""

from __future__ import annotations

import torch

from presso.compress.quantizers._base import QuantLayout, Quantizer, int_params, int_round
from presso.compress.quantizers._registry import register_quantizer

SHRINK = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6)
ONE_END = (0.9, 0.8, 0.7)


def importance(stats, in_f: int, device) -> torch.Tensor:
    """Per-input weights ``[in]`` from the squared norms (floored so no input counts zero)."""
    if stats is None or stats.sq_norms is None:
        return torch.ones(in_f, device=device)
    imp = stats.sq_norms.to(device, torch.float32)
    return imp + 1e-6 * imp.mean().clamp(min=1e-30)


def search_params(w: torch.Tensor, imp: torch.Tensor, bits: int, symmetric: bool):
    """Per-group ``(scales fp16, zeros float32)`` of ``w [out, G, g]`` minimising weighted error."""
    best_err = best_s = best_z = None
    pairs = [(f, f) for f in SHRINK]
    if not symmetric:
        pairs += [(1.0, f) for f in ONE_END] + [(f, 1.0) for f in ONE_END]
    for lo_f, hi_f in pairs:
        s, z = int_params(w, bits, symmetric, lo_f, hi_f)
        q = int_round(w, s, z, bits, symmetric)
        q.sub_(z.unsqueeze(-1)).mul_(s.to(torch.float32).unsqueeze(-1)).sub_(w).square_().mul_(imp)
        err = q.sum(-1)
        if best_err is None:
            best_err, best_s, best_z = err, s, z
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_s, best_z = torch.where(better, s, best_s), torch.where(better, z, best_z)
    return best_s, best_z


@register_quantizer
class ImportanceRTN(Quantizer):
    name = "imatrix"
    zero_kind = "int"
    needs = "norms"

    @torch.no_grad()
    def quantize(self, weight, quant, stats=None, mask=None) -> QuantLayout:
        out_f, in_f = weight.shape
        g = in_f if quant.group_size == 0 else quant.group_size
        w = weight.detach().to(torch.float32).reshape(out_f, in_f // g, g)
        imp = importance(stats, in_f, w.device).reshape(in_f // g, g)
        scales, zeros = search_params(w, imp, quant.bits, quant.symmetric)
        codes = int_round(w, scales, zeros, quant.bits, quant.symmetric).to(torch.uint8).reshape(out_f, in_f)
        zeros = None if quant.symmetric else zeros.to(torch.uint8)
        return QuantLayout(codes, scales, zeros, None, quant.bits, quant.group_size, quant.symmetric)
