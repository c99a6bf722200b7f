"""Kernels that run the stored formats for real, so latency measures the format, not fake quantization.

After :func:`compress_` the model's Linear weights hold dequantized values and run at dense
speed. :func:`kernel_view` temporarily swaps every compressed Linear for a module that runs
the weight in its compressed form with a torch kernel made for it, and puts the model back
afterwards:

=====================  ===========================================  =============================
plan of the layer      CPU                                          CUDA
=====================  ===========================================  =============================
2 to 4 bits, groups    ``torch._weight_int4pack_mm_for_cpu``        ``torch._weight_int4pack_mm``
                       (the plan's own codes, scales and zeros;     (tinygemm, sm80+; the same)
                       3-bit codes run as 4-bit nibbles)
5 to 8 bits            ``torch._weight_int8pack_mm`` (weight-only   the same where torch has it
                       int8, per output channel: the plan's
                       weights re-coded per channel)
2:4, not quantized     dense (no CPU kernel)                        ``to_sparse_semi_structured``
unstructured sparsity  dense: no kernel speeds it up at these       dense
                       sparsities; its zeros stay in the codes
=====================  ===========================================  =============================

The int4 kernels take bf16 activations (their fp32 paths are far slower), so a kernel layer
casts its input to bf16 and its output back; the rest of the model (attention, norms,
embeddings, unquantized layers) runs as loaded. Anything a kernel cannot take (a group size
it does not support, an older GPU, a missing op) falls back to the dense layer and is counted
under ``"dense"`` with the reason in ``reasons``.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

_INT4_GROUPS = (32, 64, 128, 256)


@dataclass
class KernelReport:
    """Which kernel each compressed Linear ran with during a :func:`kernel_view`."""

    counts: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, reason: str | None = None) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if reason:
            self.reasons[reason] = self.reasons.get(reason, 0) + 1

    def summary(self) -> str:
        text = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))
        if self.reasons:
            text += " (dense because: " + "; ".join(f"{r} x{n}" for r, n in sorted(self.reasons.items())) + ")"
        return text or "no compressed layer"


class KernelLinear(nn.Module):
    """A Linear that runs its weight through a packed-format kernel (see the module docstring)."""

    def __init__(self, kind: str, in_features: int, out_features: int, bias: torch.Tensor | None, **buffers):
        super().__init__()
        self.kind, self.in_features, self.out_features = kind, in_features, out_features
        self.group_size = int(buffers.pop("group_size", 0))
        self.bias = bias
        for name, tensor in buffers.items():
            setattr(self, name, tensor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, self.in_features)
        if self.kind == "int4":
            flat = flat.to(torch.bfloat16)
            if flat.is_cuda:
                y = torch._weight_int4pack_mm(flat, self.packed, self.group_size, self.scales_and_zeros)
            else:
                y = torch._weight_int4pack_mm_for_cpu(flat, self.packed, self.group_size, self.scales_and_zeros)
        elif self.kind == "int8":
            flat = flat.to(torch.bfloat16)
            y = torch._weight_int8pack_mm(flat, self.weight_int8, self.scales)
        elif self.kind == "sparse_2_4":
            flat = flat.to(self.weight_sparse.dtype)
            y = torch.nn.functional.linear(flat, self.weight_sparse)
        else:  # pragma: no cover - built only with the kinds above
            raise RuntimeError(f"unknown kernel kind {self.kind!r}")
        y = y.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)


def _int4(rec, linear: nn.Linear) -> KernelLinear:
    out_f, in_f = rec.shape
    group = rec.group_size or next((g for g in reversed(_INT4_GROUPS) if in_f % g == 0), 0)
    if group not in _INT4_GROUPS or in_f % group:
        raise ValueError(f"int4 kernel: group size {rec.group_size or 'per-channel'} not in {_INT4_GROUPS}")
    device = linear.weight.device
    scales = rec.scales.to(device, torch.float32)
    if getattr(rec, "mins", None) is not None:  # w = q * s + min = (q - z) * s with a float z = -min / s
        zeros = -rec.mins.to(device, torch.float32) / scales
    else:
        zeros = (rec.zeros.to(device, torch.float32) if rec.zeros is not None
                 else torch.full_like(scales, float(1 << (rec.bits - 1))))
    if rec.group_size == 0:  # one group per row: the same scale and zero repeated per kernel group
        scales = scales.repeat_interleave(in_f // group, dim=1)
        zeros = zeros.repeat_interleave(in_f // group, dim=1)
    # NOTE: the kernels dequantize (q - 8) * scale + zero; ours is (q - z) * scale.
    scales_and_zeros = torch.stack([scales.t(), (scales * (8.0 - zeros)).t()], dim=-1).contiguous().to(torch.bfloat16)
    codes = rec.codes.to(device)
    if device.type == "cuda":
        tiles = next(t for t in (8, 4, 2, 1) if in_f % (16 * t) == 0)
        packed_bytes = (codes[:, ::2] << 4 | codes[:, 1::2]).to(torch.uint8).contiguous()
        packed = torch._convert_weight_to_int4pack(packed_bytes, tiles)
    else:
        packed = torch._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 1)
    return KernelLinear("int4", in_f, out_f, linear.bias, packed=packed, scales_and_zeros=scales_and_zeros,
                        group_size=group)


def _int8(rec, linear: nn.Linear) -> KernelLinear:
    weight = linear.weight.detach().to(torch.float32)
    scales = (weight.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    weight_int8 = torch.round(weight / scales.unsqueeze(1)).clamp_(-127, 127).to(torch.int8)
    return KernelLinear("int8", rec.shape[1], rec.shape[0], linear.bias, weight_int8=weight_int8,
                        scales=scales.to(torch.bfloat16))


def _sparse_2_4(rec, linear: nn.Linear) -> KernelLinear:
    from torch.sparse import to_sparse_semi_structured

    dtype = torch.float16 if linear.weight.dtype == torch.float16 else torch.bfloat16
    sparse = to_sparse_semi_structured(linear.weight.detach().to(dtype))
    return KernelLinear("sparse_2_4", rec.shape[1], rec.shape[0], linear.bias, weight_sparse=sparse)


def kernel_for(rec, linear: nn.Linear) -> tuple[nn.Module | None, str, str | None]:
    """The kernel module for one compressed Linear: ``(module or None, kind, reason for dense)``."""
    device = linear.weight.device
    try:
        if rec.bits is not None and rec.bits <= 4:
            module = _int4(rec, linear)
        elif rec.bits is not None:
            module = _int8(rec, linear)
        elif rec.config.sparsity.n_m == (2, 4) and device.type == "cuda":
            module = _sparse_2_4(rec, linear)
        else:
            if rec.config.sparsity.n_m == (2, 4):
                reason = "2:4 kernel needs CUDA"
            elif rec.mask is not None:
                reason = "unstructured sparsity has no kernel"
            else:
                reason = "not quantized"
            return None, "dense", reason
        with torch.inference_mode():  # fail here, not in the timed loop
            module(torch.zeros(1, rec.shape[1], device=device, dtype=linear.weight.dtype))
        return module, module.kind, None
    except (RuntimeError, ValueError, NotImplementedError, AttributeError) as exc:
        return None, "dense", " ".join(str(exc).split())[:80]


@contextmanager
def kernel_view(model: nn.Module, result):
    """Swap the compressed Linears of ``model`` (compressed as ``result``) for kernel modules.

    Yields a :class:`KernelReport`; the original modules are put back on exit, so the model is
    unchanged afterwards. A ``result`` of ``None`` (a dense model) swaps nothing.

    Example::

        with kernel_view(model, result) as report:
            latency = time_forward(model)
        print(report.summary())   # "int4 140, int8 70"
    """
    from presso.compress._modules import base_module

    report = KernelReport()
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    try:
        for name, rec in (result.modules.items() if result is not None else ()):
            linear, prefix = base_module(model, name)
            if isinstance(linear, nn.Embedding):  # a table lookup: dequantized rows cost no matmul
                report.add("dense", "embedding lookup")
                continue
            if prefix != name:
                report.add("dense", "LoRA-wrapped layer")
                continue
            module, kind, reason = kernel_for(rec, linear)
            report.add(kind, reason)
            if module is None:
                continue
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            swapped.append((parent, child, getattr(parent, child)))
            setattr(parent, child, module)
        yield report
    finally:
        for parent, child, original in reversed(swapped):
            setattr(parent, child, original)
