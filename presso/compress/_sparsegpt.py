"""SparseGPT: pruning (and optionally GPTQ quantization) with error feedback in one pass.

Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot"
(ICML 2023, arXiv:2301.00774), Algorithm 1. Columns are visited left to right in blocks of
128. At the start of a block the mask of that block is chosen by the OBS saliency
``w**2 / [H^-1]_jj`` (the diagonal of the inverse Hessian as it stands when column ``j`` is
reached: the squared diagonal of the Cholesky factor); N:M patterns choose per row among each
M columns. Each column is then pruned, and with quantization its kept weights are rounded
onto the layer's grid, and the error of both is spread over the later columns through the
inverse Hessian, exactly as GPTQ does (:mod:`presso.compress.quantizers.gptq`; the same
damped factor, computed once per layer input and shared with GPTQ). This is the paper's
joint sparsification + quantization: one sweep, no separate prune-then-quantize.

The grid is GPTQ's (integer zero point, groups set from the error-updated, pruned weights
when the sweep reaches them), so pruned weights take the code of exact 0 and the layout
stores exactly wherever GPTQ's does.

Why no library: the authors' reference (IST-DASLab/sparsegpt) is research code, not a
package; llm-compressor's ``SparseGPTModifier`` needs llm-compressor 0.14, which pins
transformers <= 5.17 (we run a newer transformers 5) and runs through its own ``oneshot``
pipeline over the whole model; neural-compressor and gptqmodel offer no per-layer call either.
A per-trial, per-layer search needs "prune this one weight with this Hessian", so it is
implemented here and tested against a float64 computation of the paper's equations
(``tests/compress/test_sparsegpt.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from presso.compress.quantizers.gptq import BLOCK, FACTORS, PERCDAMP, _factor, _grid, _params


@dataclass
class SparseGPTResult:
    """One layer after SparseGPT.

    Attributes:
        keep: ``bool [out, in]`` keep-mask.
        weight: ``float32 [out, in]``: the pruned, error-updated weight (without quantization),
            or the dequantized weight (with it).
        codes, scales, zeros: the GPTQ-style layout when quantized (``zeros`` ``None`` when
            symmetric), else ``None``.
    """

    keep: torch.Tensor
    weight: torch.Tensor
    codes: torch.Tensor | None = None
    scales: torch.Tensor | None = None
    zeros: torch.Tensor | None = None


def _lcm(a: int, b: int) -> int:
    import math

    return a * b // math.gcd(a, b)


@torch.no_grad()
def sparsegpt(weight: torch.Tensor, hessian: torch.Tensor, amount: float, n_m: tuple[int, int] | None = None,
              quant=None, *, percdamp: float = PERCDAMP, block: int = BLOCK, search: bool = True) -> SparseGPTResult:
    """Prune ``weight [out, in]`` to ``amount`` (or keep ``N`` of every ``M`` inputs) with error
    feedback through ``hessian = X^T X``, quantizing the kept weights on the way when ``quant``
    (a :class:`~presso.plan.QuantConfig` with bits) is given.

    ``search`` sets each group's grid by GPTQ's ``diag(H)``-weighted search (else min/max).
    """
    out_f, in_f = weight.shape
    device = weight.device
    W = weight.detach().to(torch.float32).clone()
    H = hessian if hessian.device == device and hessian.dtype == torch.float32 else hessian.to(device, torch.float32)
    dead, _, Hinv = FACTORS.get(H, False, percdamp, lambda: _factor(H, False, percdamp))
    W[:, dead] = 0.0
    quantized = quant is not None and quant.active and quant.format is None
    bits, sym = (quant.bits, quant.symmetric) if quantized else (0, False)
    g = (in_f if quant.group_size == 0 else quant.group_size) if quantized else in_f
    imp = None
    if quantized and search:
        imp = torch.diag(H).clone()
        imp[dead] = 1.0
        imp += 1e-6 * imp.mean()
    static = quantized and g == in_f  # per channel: one grid per row, set up front as the paper does
    if static:
        scales, zeros = _grid(W, imp, bits, quant.group_size, sym)
    elif quantized:
        scales = torch.empty(out_f, in_f // g, dtype=torch.float16, device=device)
        zeros = torch.empty(out_f, in_f // g, dtype=torch.float32, device=device)
    # Blocks hold whole groups and whole N:M chunks, so a group's grid sees its final mask.
    unit = _lcm(g if quantized and not static else 1, n_m[1] if n_m else 1)
    block = max(unit, block // unit * unit)
    # NOTE: the sweep runs on transposed copies ([in, out]), as GPTQ's does: a column is a
    # contiguous row and the update of the columns still to come one contiguous block.
    WT = W.t().contiguous()
    if static:
        ST = scales.to(torch.float32).repeat_interleave(g, dim=1).t().contiguous()
        ZT = zeros.repeat_interleave(g, dim=1).t().contiguous()
    elif quantized:
        ST, ZT = torch.empty_like(WT), torch.empty_like(WT)
    qmax, lowest = float((1 << bits) - 1), 1.0 if sym else 0.0
    keepT = torch.ones(in_f, out_f, dtype=torch.bool, device=device)
    outT = torch.empty_like(WT)
    codesT = torch.empty_like(WT) if quantized else None
    for i1 in range(0, in_f, block):
        i2 = min(i1 + block, in_f)
        W1 = WT[i1:i2].clone()
        Err1 = torch.empty_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        d = torch.diag(Hinv1).pow(2).unsqueeze(1)  # [H^-1]_jj when column j is reached
        prune1 = keepT[i1:i2]  # filled with "pruned" below, inverted at the end of the block
        prune1.zero_()
        if n_m is None:
            k = round(W1.numel() * amount)
            if k:
                prune1.view(-1)[torch.topk((W1.pow(2) / d).flatten(), k, largest=False).indices] = True
        for i in range(i2 - i1):
            col = i1 + i
            if n_m is not None and i % n_m[1] == 0:
                sal = W1[i:i + n_m[1]].pow(2) / d[i:i + n_m[1]]
                idx = torch.topk(sal, n_m[1] - n_m[0], dim=0, largest=False).indices
                prune1[i:i + n_m[1]].scatter_(0, idx, True)
            w = W1[i]
            kept = ~prune1[i]
            if quantized:
                if not static and col % g == 0:
                    gi = col // g
                    grp = (W1[i:i + g] * ~prune1[i:i + g]).t()
                    s, z = _params(grp.unsqueeze(1), None if imp is None else imp[col:col + g].unsqueeze(0), bits, sym)
                    scales[:, gi], zeros[:, gi] = s[:, 0], z[:, 0]
                    ST[i1 + i:i1 + i + g], ZT[i1 + i:i1 + i + g] = s[:, 0].to(torch.float32), z[:, 0]
                s, z = ST[col], ZT[col]
                q = torch.where(kept, torch.round(w / s).add_(z).clamp_(lowest, qmax), z)  # int_round's arithmetic
                codesT[col] = q
                deq = (q - z).mul_(s)
            else:
                deq = w * kept
            outT[col] = deq
            err = (w - deq).div_(Hinv1[i, i])
            W1[i:].addr_(Hinv1[i, i:], err, alpha=-1.0)
            Err1[i] = err
        prune1.logical_not_()
        WT[i2:] -= Hinv[i1:i2, i2:].t() @ Err1
    keep, out = keepT.t().contiguous(), outT.t().contiguous()
    codes = None if codesT is None else codesT.t().contiguous()
    if not quantized:
        return SparseGPTResult(keep=keep, weight=out)
    return SparseGPTResult(keep=keep, weight=out, codes=codes.to(torch.uint8), scales=scales,
                           zeros=None if sym else zeros.to(torch.uint8))
