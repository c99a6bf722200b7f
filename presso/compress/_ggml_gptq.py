"""GPTQ inside ggml's blocks: ggml's block scales, then GPTQ's rounding on their grid.

Frantar, Ashkboos, Hoefler, Alistarh, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers" (ICLR 2023, arXiv:2210.17323), Algorithm 1, with the grid
fixed up front ("static groups"): ggml quantizes the layer as usual (with the same importance
matrix), each block's scale fields (``d``; ``d`` and ``m`` for Q4_1/Q5_1) are read from its bytes
and kept, and the column sweep rounds every weight to the nearest value of its block's grid,
feeding the error forward through the inverse Hessian (the factor and its cache are
:mod:`presso.compress.quantizers.gptq`'s). The new codes are written back into the same bytes,
so the blocks stay exactly what a GGUF stores, and the torch weight is ggml's dequantization
of them (trial weights equal file weights).

Why no library: GPTQ libraries (gptqmodel, llm-compressor, auto-round) round onto their own
integer grids; none rounds inside ggml's blocks, and llama.cpp has no GPTQ.

Block layouts (ggml-common.h; checked against the ``gguf`` package's dequantization in the
tests): every type holds 32 values; ``qs`` holds two 4-bit codes per byte (low nibbles:
elements 0-15, high nibbles: 16-31), Q5 types add ``qh`` (bit j: the fifth bit of element j).
"""

from __future__ import annotations

import numpy as np
import torch

from presso.compress.quantizers.gptq import BLOCK, FACTORS, PERCDAMP, _factor
from presso.errors import PressoError
from presso.plan import GPTQ_FORMATS

QK = 32
_KVALUES_IQ4NL = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)

# name -> (numpy block dtype, grid levels (value = d * level + m), has m)
_LAYOUTS = {
    "Q8_0": (np.dtype([("d", "<f2"), ("qs", "i1", 32)]), np.arange(-128, 128), False),
    "Q4_0": (np.dtype([("d", "<f2"), ("qs", "u1", 16)]), np.arange(16) - 8, False),
    "Q4_1": (np.dtype([("d", "<f2"), ("m", "<f2"), ("qs", "u1", 16)]), np.arange(16), True),
    "Q5_0": (np.dtype([("d", "<f2"), ("qh", "<u4"), ("qs", "u1", 16)]), np.arange(32) - 16, False),
    "Q5_1": (np.dtype([("d", "<f2"), ("m", "<f2"), ("qh", "<u4"), ("qs", "u1", 16)]), np.arange(32), True),
    "IQ4_NL": (np.dtype([("d", "<f2"), ("qs", "u1", 16)]), np.array(_KVALUES_IQ4NL), False),
}


def _blocks(packed: np.ndarray, name: str) -> np.ndarray:
    if name not in GPTQ_FORMATS:
        raise PressoError(f"quant.format: got {name!r} with method 'gptq'; allowed: {list(GPTQ_FORMATS)}")
    dtype = _LAYOUTS[name][0]
    return np.ascontiguousarray(packed).view(dtype)  # [out, blocks per row]


def block_scales(packed: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """``(d, m | None)``, float32 ``[out, blocks]``, of ggml blocks ``uint8 [out, row bytes]``."""
    b = _blocks(packed, name)
    return b["d"].astype(np.float32), (b["m"].astype(np.float32) if _LAYOUTS[name][2] else None)


def read_codes(packed: np.ndarray, name: str) -> np.ndarray:
    """Level indices ``int64 [out, in]`` (index into the format's levels) of ggml blocks."""
    b = _blocks(packed, name)
    if name == "Q8_0":
        q = b["qs"].astype(np.int64) + 128
    else:
        qs = b["qs"].astype(np.int64)
        q = np.concatenate([qs & 0xF, qs >> 4], axis=-1)
        if "qh" in b.dtype.names:
            bits = (b["qh"].astype(np.int64)[..., None] >> np.arange(QK)) & 1
            q = q | (bits << 4)
    return q.reshape(q.shape[0], -1)


def write_codes(packed: np.ndarray, name: str, codes: np.ndarray) -> np.ndarray:
    """A copy of ``packed`` with its codes replaced by ``codes`` (level indices ``[out, in]``);
    the scale fields are left as they are."""
    out = np.ascontiguousarray(packed).copy()
    b = out.view(_LAYOUTS[name][0])
    q = codes.astype(np.int64).reshape(b.shape[0], b.shape[1], QK)
    if name == "Q8_0":
        b["qs"] = (q - 128).astype(np.int8)
        return out
    b["qs"] = ((q[..., :16] & 0xF) | ((q[..., 16:] & 0xF) << 4)).astype(np.uint8)
    if "qh" in b.dtype.names:
        b["qh"] = (((q >> 4) & 1) << np.arange(QK)).sum(axis=-1).astype(np.uint32)
    return out


@torch.no_grad()
def gptq_blocks(weight: torch.Tensor, packed: np.ndarray, name: str, hessian: torch.Tensor, *,
                mask: torch.Tensor | None = None, act_order: bool = True, percdamp: float = PERCDAMP,
                block: int = BLOCK) -> np.ndarray:
    """GPTQ codes inside ggml blocks ``packed`` (from :func:`~presso.compress._formats.quantize_rows`
    of ``weight``), with ``hessian = X^T X``; returns the new blocks, scale fields unchanged.

    ``mask``: kept weights (pruned ones are rounded from 0 and their error fed forward, as
    SparseGPT treats a fixed mask).
    """
    out_f, in_f = weight.shape
    device = weight.device
    levels_np = _LAYOUTS[name][1]
    d, m = block_scales(packed, name)
    D = torch.from_numpy(d).to(device).repeat_interleave(QK, dim=1)
    M = None if m is None else torch.from_numpy(m).to(device).repeat_interleave(QK, dim=1)
    levels = torch.tensor(levels_np, dtype=torch.float32, device=device)
    mids = (levels[1:] + levels[:-1]) / 2
    H = hessian if hessian.device == device and hessian.dtype == torch.float32 else hessian.to(device, torch.float32)
    _, perm, Hinv = FACTORS.get(H, act_order, percdamp, lambda: _factor(H, act_order, percdamp))
    W = weight.detach().to(torch.float32).clone()
    keep = None if mask is None else mask.to(device).bool()
    if perm is not None:
        W, D = W[:, perm], D[:, perm]
        M = None if M is None else M[:, perm]
        keep = None if keep is None else keep[:, perm]
    # Transposed ([in, out]) so a column is a contiguous row, as in gptq_quantize's sweep.
    WT, DT = W.t().contiguous(), D.t().contiguous()
    MT = None if M is None else M.t().contiguous()
    KT = None if keep is None else keep.t().contiguous()
    # A zero scale (an all-zero block) makes every code the same value: round from 0 there.
    safe = torch.where(DT == 0, torch.ones_like(DT), DT)
    QT = torch.empty(in_f, out_f, dtype=torch.int64, device=device)
    for i1 in range(0, in_f, block):
        i2 = min(i1 + block, in_f)
        W1 = WT[i1:i2].clone()
        Err1 = torch.empty_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            c = i1 + i
            w = W1[i] if KT is None else torch.where(KT[c], W1[i], torch.zeros_like(W1[i]))
            t = w if MT is None else w - MT[c]
            t = torch.where(DT[c] == 0, torch.zeros_like(t), t / safe[c])
            q = torch.bucketize(t, mids)
            value = levels[q] * DT[c]
            if MT is not None:
                value = value + MT[c]
            QT[c] = q
            err = (W1[i] - value).div_(Hinv1[i, i])
            W1[i:].addr_(Hinv1[i, i:], err, alpha=-1.0)
            Err1[i] = err
        WT[i2:] -= Hinv[i1:i2, i2:].t() @ Err1
    Q = QT.t()
    if perm is not None:
        Q = Q[:, torch.argsort(perm)]
    return write_codes(packed, name, Q.cpu().numpy())
