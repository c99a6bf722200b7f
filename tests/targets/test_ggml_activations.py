"""The trial's activation rounding equals ggml's own (``from_float`` of each ``vec_dot_type``,
called in the libggml-cpu that llama-cpp-python ships)."""

import ctypes

import numpy as np
import pytest
import torch
from torch import nn

from presso.targets._ggml_activations import round_activations, runtime_activations
from presso.targets._ggml_kernels import _ggml_cpu, vec_dot_type

# (type, values per block, block layout: numpy dtype of ggml's block struct, scale field)
_LAYOUTS = {
    "Q8_0": (32, np.dtype([("d", "<f2"), ("qs", "i1", 32)])),
    "Q8_1": (32, np.dtype([("d", "<f2"), ("s", "<f2"), ("qs", "i1", 32)])),
    "Q8_K": (256, np.dtype([("d", "<f4"), ("qs", "i1", 256), ("bsums", "<i2", 16)])),
}


def _ggml_round(x: np.ndarray, vec_type: str) -> np.ndarray:
    """``x`` quantized by ggml's ``from_float`` for ``vec_type`` and decoded again."""
    import gguf

    block, layout = _LAYOUTS[vec_type]
    traits = _ggml_cpu().ggml_get_type_traits_cpu(int(gguf.GGMLQuantizationType[vec_type])).contents
    from_float = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)(traits.from_float)
    src = np.ascontiguousarray(x, dtype=np.float32)
    out = np.zeros(src.size // block, dtype=layout)
    from_float(src.ctypes.data, out.ctypes.data, src.size)
    return (out["qs"].astype(np.float32) * out["d"].astype(np.float32)[:, None]).reshape(x.shape)


def _activations(width: int) -> torch.Tensor:
    x = torch.randn(6, width, generator=torch.Generator().manual_seed(0)) * torch.logspace(-3, 2, width)
    x[1] = 0.0  # an all-zero row: ggml stores d = 0
    x[2] = 0.75  # a constant row
    x[3, : width // 2] = 0.0
    return x


@pytest.mark.parametrize("vec_type", ["Q8_0", "Q8_1", "Q8_K"])
def test_block_rounding_equals_ggml_from_float(vec_type):
    x = _activations(512)
    expected = torch.from_numpy(_ggml_round(x.numpy(), vec_type))
    got = round_activations(x, vec_type)
    assert got.shape == x.shape and got.dtype == x.dtype
    # ggml computes d = 1/iscale for Q8_K where we take amax/127: at most one float step apart.
    assert torch.allclose(got, expected, rtol=2e-7, atol=0)
    assert not torch.equal(got, x)


def test_the_activation_types_are_ggmls():
    assert {f: vec_dot_type(f) for f in ("Q4_0", "Q4_1", "IQ4_NL", "Q4_K", "Q6_K", "F16", "F32")} == {
        "Q4_0": "Q8_0", "Q4_1": "Q8_1", "IQ4_NL": "Q8_0", "Q4_K": "Q8_K", "Q6_K": "Q8_K", "F16": "F16", "F32": "F32"}
    x = _activations(64)
    assert torch.equal(round_activations(x, "F16"), x.half().float())
    assert torch.equal(round_activations(x, "F32"), x)
    with pytest.raises(ValueError, match="vec_dot_type: got 'Q2_K'"):
        round_activations(x, "Q2_K")


def test_runtime_activations_round_only_inside_the_context():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))
    x = torch.randn(3, 64)
    with torch.no_grad():
        plain = model(x)
        with runtime_activations(model, {"0": "Q8_0"}):
            rounded = model(x)
            expected = model[2](model[1](model[0](round_activations(x, "Q8_0"))))
        after = model(x)
    assert torch.equal(rounded, expected) and not torch.equal(rounded, plain)
    assert torch.equal(after, plain)
