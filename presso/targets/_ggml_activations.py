"""The activations llama.cpp multiplies a weight with, reproduced in torch.

ggml's CPU backend does not multiply a quantized weight with float activations: it first rounds
each row of the matmul's input to the weight type's ``vec_dot_type`` (read from ggml's own type
traits, :func:`presso.targets._ggml_kernels.vec_dot_type`), and the repacked and llamafile
kernels take the same type. A trial that scores a plan with float activations scores a model
llama.cpp does not run, and the error adds up over 30 blocks (on SmolLM2 a mixed plan's
perplexity ratio was 1.7% below llama.cpp's). :func:`runtime_activations` rounds every Linear's
input as ggml does, while a trial is measured:

* ``Q8_0`` / ``Q8_1`` (legacy types, IQ4_NL): blocks of 32 values, ``d = amax / 127`` stored as
  fp16, codes ``round(x * 127 / amax)`` (``quantize_row_q8_0``; ``Q8_1`` adds the block's sum,
  which is not an extra rounding of the values);
* ``Q8_K`` (K-quants): blocks of 256, the signed extreme maps to -127, ``d`` stays fp32
  (``quantize_row_q8_K_ref``);
* ``F16`` / ``BF16``: the activations in that float type;
* ``F32``: unchanged.

Rounding is to nearest, ties to even, as ggml's AVX kernels round (``_mm256_round_ps``,
``nearest_int``). Why torch and not ggml's ``from_float``: the activations live in the torch
model's forward, and a round trip through ctypes per Linear would cost more than the rounding.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

_BLOCKS = {"Q8_0": (32, torch.float16), "Q8_1": (32, torch.float16), "Q8_K": (256, None)}
_FLOATS = {"F16": torch.float16, "BF16": torch.bfloat16}


def round_activations(x: torch.Tensor, vec_type: str) -> torch.Tensor:
    """``x`` (``[..., in_features]``) as ggml hands it to a matmul whose activations are ``vec_type``."""
    if vec_type == "F32":
        return x
    if vec_type in _FLOATS:
        return x.to(_FLOATS[vec_type]).to(x.dtype)
    if vec_type not in _BLOCKS:
        raise ValueError(f"vec_dot_type: got {vec_type!r}; allowed: F32, {', '.join([*_FLOATS, *_BLOCKS])}")
    block, scale_dtype = _BLOCKS[vec_type]
    blocks = x.float().reshape(*x.shape[:-1], x.shape[-1] // block, block)
    amax = blocks.abs().amax(dim=-1, keepdim=True)
    inverse = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))
    codes = torch.round(blocks * inverse)
    scale = amax / 127.0
    if scale_dtype is not None:
        scale = scale.to(scale_dtype).float()
    return (codes * scale).reshape(x.shape).to(x.dtype)


def _hook(vec_type: str):
    def pre_hook(module, args):
        return (round_activations(args[0], vec_type), *args[1:])

    return pre_hook


@contextlib.contextmanager
def runtime_activations(model: nn.Module, activation_types: dict[str, str]):
    """While active, every Linear named in ``activation_types`` (``{module: vec_dot_type}``)
    computes with its input rounded as ggml rounds it; the model is unchanged afterwards."""
    handles = []
    try:
        for name, module in model.named_modules():
            vec_type = activation_types.get(name, "F32")
            if isinstance(module, nn.Linear) and vec_type != "F32":
                handles.append(module.register_forward_pre_hook(_hook(vec_type)))
        yield model
    finally:
        for handle in handles:
            handle.remove()
