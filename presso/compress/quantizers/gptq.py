"""``gptq``: quantization with error feedback through the layer's input Hessian.

Frantar, Ashkboos, Hoefler, Alistarh, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers" (ICLR 2023, arXiv:2210.17323), Algorithm 1: columns are
quantized one at a time and each column's rounding error is spread over the columns not yet
quantized, weighted by the inverse Hessian ``H = X^T X`` (Cholesky form, lazy block updates,
damping ``percdamp * mean(diag H)``), with optional activation order (columns by descending
``diag H``).

The grid is RTN's integer zero-point layout (:mod:`presso.compress.quantizers.rtn`), with
contiguous groups of ``group_size`` inputs, so the codes store exactly wherever RTN codes do.
Without activation order a group's scale and zero point are set from the error-updated
weights when GPTQ reaches the group (as the reference code does); with activation order they
are fixed up front from the original weights ("static groups"), since the columns of one
group are then visited out of order and a contiguous group must share one grid. Pruned
weights are forced onto code ``zero`` (exact 0) and their error is fed forward too, which is
SparseGPT's treatment of a fixed mask.

Why no library: gptqmodel 7.x builds C++/CUDA extensions and drives whole models through its
own loader; llm-compressor 0.14 pins transformers <= 5.17 (we run transformers 5 newer than
that) and applies GPTQ through its own oneshot pipeline; auto-round is a different method
(signed-gradient rounding) with the same whole-model flow; hqq is half-quadratic rounding,
not GPTQ. None offers "quantize this one weight with this Hessian on this grid" without
taking over the model, which is what a per-layer, per-trial search needs.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict

import torch

from presso.compress.quantizers._base import QuantLayout, Quantizer, int_params, int_round
from presso.compress.quantizers._registry import register_quantizer
from presso.compress.quantizers.imatrix import search_params

PERCDAMP = 0.01
BLOCK = 128
_FACTOR_BYTES = 1 << 29  # bound on the cached inverse-Hessian factors (512 MiB)


class _FactorCache:
    """The damped, permuted inverse-Hessian factor per layer input, computed once and reused.

    q/k/v (and gate/up) share one ``X^T X`` tensor, and every trial that revisits a layer with
    another bit width or group size needs the same factor; it depends only on the Hessian, the
    column order and the damping. Entries are keyed by the Hessian tensor's identity and held
    with a weak reference, so a new calibration pass (a new tensor) never reads a stale entry.
    """

    def __init__(self, max_bytes: int = _FACTOR_BYTES):
        self.max_bytes, self.hits, self.misses = max_bytes, 0, 0
        self._entries: OrderedDict = OrderedDict()
        self._bytes = 0

    def get(self, hessian: torch.Tensor, act_order: bool, percdamp: float, build):
        key = (id(hessian), hessian.device, act_order, percdamp)
        entry = self._entries.get(key)
        if entry is not None and entry[0]() is hessian:
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[1]
        self.misses += 1
        value = build()
        size = sum(t.numel() * t.element_size() for t in value if isinstance(t, torch.Tensor))
        if size <= self.max_bytes:
            self._entries[key] = (weakref.ref(hessian), value)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, old) = self._entries.popitem(last=False)
                self._bytes -= sum(t.numel() * t.element_size() for t in old if isinstance(t, torch.Tensor))
        return value


FACTORS = _FactorCache()


def _factor(H: torch.Tensor, act_order: bool, percdamp: float):
    """``(dead, perm, Hinv)``: dead inputs, the column order (``None``: natural) and the upper
    Cholesky factor of ``(H_perm + damp I)^-1`` (row i: the update weights for column i)."""
    in_f = H.shape[0]
    H = H.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else None
    if perm is not None:
        H = H[perm][:, perm]
    damp = percdamp * torch.mean(torch.diag(H))
    H[range(in_f), range(in_f)] += damp
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    return dead, perm, Hinv


def _params(w: torch.Tensor, imp: torch.Tensor | None, bits: int, symmetric: bool):
    """Grid of grouped weights ``w [out, G, g]``: RTN's min/max range, or (``imp [G, g]`` given)
    the shrunk range with the least ``imp``-weighted error, as :mod:`imatrix` chooses it."""
    if imp is None:
        return int_params(w, bits, symmetric)
    return search_params(w, imp, bits, symmetric)


def _grid(w: torch.Tensor, imp, bits: int, group_size: int, symmetric: bool):
    """Per-group params of ``w [out, in]``: ``(scales fp16, zeros f32)`` of shape ``[out, groups]``."""
    out_f, in_f = w.shape
    g = in_f if group_size == 0 else group_size
    return _params(w.reshape(out_f, in_f // g, g), None if imp is None else imp.reshape(in_f // g, g), bits, symmetric)


@torch.no_grad()
def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor | None, bits: int, group_size: int, symmetric: bool,
                  *, mask: torch.Tensor | None = None, act_order: bool = False, percdamp: float = PERCDAMP,
                  block: int = BLOCK, search: bool = True):
    """GPTQ of one weight ``[out, in]`` with ``hessian = X^T X [in, in]`` (``None``: identity, i.e. RTN).

    ``search``: set each group's scale and zero point by the ``diag(H)``-weighted grid search of
    :mod:`imatrix` instead of the plain min/max range (the grid is then matched to the inputs
    that matter, and GPTQ's error feedback rounds onto it).

    Returns ``(codes uint8 [out, in], scales fp16 [out, groups], zeros uint8 [out, groups] | None)``.
    """
    out_f, in_f = weight.shape
    g = in_f if group_size == 0 else group_size
    device = weight.device
    W = weight.detach().to(torch.float32).clone()
    if hessian is None:
        dead, perm, Hinv = _factor(torch.eye(in_f, device=device), act_order, percdamp)
    else:
        H = hessian if hessian.device == device and hessian.dtype == torch.float32 else hessian.to(device, torch.float32)
        dead, perm, Hinv = FACTORS.get(H, act_order, percdamp, lambda: _factor(H, act_order, percdamp))
    W[:, dead] = 0.0
    keep = None if mask is None else mask.to(device).bool()
    static = act_order or g == in_f
    if search:
        diag = torch.diag(hessian.to(device, torch.float32)).clone() if hessian is not None else torch.ones(in_f, device=device)
        diag[dead] = 1.0
        imp = diag + 1e-6 * diag.mean()
    else:
        imp = None
    if static:
        scales, zeros = _grid(W if keep is None else W * keep, imp, bits, group_size, symmetric)
    else:
        scales = torch.empty(out_f, in_f // g, dtype=torch.float16, device=device)
        zeros = torch.empty(out_f, in_f // g, dtype=torch.float32, device=device)
    if perm is not None:
        W = W[:, perm]
        keep = None if keep is None else keep[:, perm]
    # NOTE: the sweep runs on transposed copies ([in, out]): a column is then a contiguous row and
    # the rank-1 update of the columns still to come is one contiguous block (about 2x faster on CPU).
    # Per-column scale and zero point are full maps in visiting order, so the column loop is a
    # handful of vector ops: round(w / s) + z clamped is int_round's arithmetic to the bit
    # (symmetric: zero 2**(bits-1), codes 1 .. 2**bits - 1).
    qmax, lowest = float((1 << bits) - 1), 1.0 if symmetric else 0.0
    WT = W.t().contiguous()
    if static:
        S = scales.to(torch.float32).repeat_interleave(g, dim=1)
        Z = zeros.repeat_interleave(g, dim=1)
        if perm is not None:
            S, Z = S[:, perm], Z[:, perm]
        ST, ZT = S.t().contiguous(), Z.t().contiguous()
    else:
        ST, ZT = torch.empty_like(WT), torch.empty_like(WT)
    KT = None if keep is None else keep.t().contiguous()
    QT = torch.empty_like(WT)
    # Blocks hold whole groups, so a group's grid is set from fully error-updated weights.
    block = max(g, (block // g) * g) if not static else block
    for i1 in range(0, in_f, block):
        i2 = min(i1 + block, in_f)
        W1 = WT[i1:i2].clone()
        Q1 = QT[i1:i2]
        Err1 = torch.empty_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        S1, Z1 = ST[i1:i2], ZT[i1:i2]
        for i in range(i2 - i1):
            if not static and (i1 + i) % g == 0:
                col, gi = i1 + i, (i1 + i) // g
                s, z = _params(W1[i:i + g].t().unsqueeze(1), None if imp is None else imp[col:col + g].unsqueeze(0),
                               bits, symmetric)
                scales[:, gi], zeros[:, gi] = s[:, 0], z[:, 0]
                S1[i:i + g], Z1[i:i + g] = s[:, 0].to(torch.float32), z[:, 0]
            w, s, z = W1[i], S1[i], Z1[i]
            q = torch.round(w / s).add_(z).clamp_(lowest, qmax)
            if KT is not None:
                q = torch.where(KT[i1 + i], q, z)
            Q1[i] = q
            err = (w - (q - z).mul_(s)).div_(Hinv1[i, i])
            W1[i:].addr_(Hinv1[i, i:], err, alpha=-1.0)
            Err1[i] = err
        WT[i2:] -= Hinv[i1:i2, i2:].t() @ Err1
    Q = QT.t().contiguous()
    if perm is not None:
        Q = Q[:, torch.argsort(perm)]
    codes = Q.to(torch.uint8)
    return codes, scales, None if symmetric else zeros.to(torch.uint8)


@register_quantizer
class GPTQ(Quantizer):
    """GPTQ on RTN's grid (damping 1% of mean diag H, blocks of 128 columns, activation order, grid search).

    ``act_order`` is a handler attribute (``GPTQ.act_order = True`` or ``gptq_quantize(...,
    act_order=True)``) rather than a plan field, to keep the plan's quant config small.
    """

    name = "gptq"
    zero_kind = "int"
    needs = "hessian"
    act_order = True

    def quantize(self, weight, quant, stats=None, mask=None) -> QuantLayout:
        hessian = None if stats is None else stats.hessian
        codes, scales, zeros = gptq_quantize(weight, hessian, quant.bits, quant.group_size, quant.symmetric,
                                             mask=mask, act_order=self.act_order)
        return QuantLayout(codes, scales, zeros, None, quant.bits, quant.group_size, quant.symmetric)
