"""ggml's block storage formats (the tensor types of GGUF files), quantized by ggml itself.

Why ggml and not Python: the ``gguf`` package quantizes only the legacy types (Q4_0 ... Q8_0)
and has no importance-weighted path; llama.cpp's K-quants and IQ4_NL, and every type with an
importance matrix, exist only in ggml's C code. llama-cpp-python ships that code as a shared
library, so we call ``ggml_quantize_chunk`` from it: the blocks are byte-identical to what
``llama-quantize`` writes. Dequantization uses the ``gguf`` package's reference routines, which
mirror ggml's ``to_float``.

A weight ``[out, in]`` is stored row by row: each row of ``in`` values is cut into blocks of
the type's block size (32 for the legacy types and IQ4_NL, 256 for the K-quants), so ``in``
must be a multiple of it. Rows are independent, so the format of a module does not depend on
how a runtime orders its rows (llama.cpp permutes Q/K rows of Llama; the blocks move intact).
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
from pathlib import Path

import numpy as np
import torch

from presso.errors import PressoError
from presso.plan import IMPORTANCE_FORMATS, STORAGE_FORMATS as FORMATS



def _qtype(name: str):
    import gguf

    if name not in FORMATS:
        raise PressoError(f"quant.format: got {name!r}; allowed: {list(FORMATS)}")
    return gguf.GGMLQuantizationType[name]


def block_size(name: str) -> int:
    """Values per block of ``name`` (1 for the float types)."""
    import gguf

    return gguf.GGML_QUANT_SIZES[_qtype(name)][0]


def row_nbytes(name: str, n_per_row: int) -> int:
    """Stored bytes of one row of ``n_per_row`` values."""
    import gguf

    block, type_size = gguf.GGML_QUANT_SIZES[_qtype(name)]
    if n_per_row % block:
        raise PressoError(f"quant.format: {name} needs rows that are a multiple of {block} values; got {n_per_row}")
    return n_per_row // block * type_size


def fits(name: str, n_per_row: int) -> bool:
    """Whether rows of ``n_per_row`` values can be stored as ``name`` (whole blocks only)."""
    return n_per_row % block_size(name) == 0


def bits_per_weight(name: str) -> float:
    import gguf

    block, type_size = gguf.GGML_QUANT_SIZES[_qtype(name)]
    return 8.0 * type_size / block


def ggml_lib_dir() -> Path:
    """The folder of the ggml shared libraries llama-cpp-python ships (quantizers, kernels)."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        raise PressoError("llama-cpp-python is not installed; it is a required dependency of presso (see the README's setup)")
    return Path(spec.origin).parent / "lib"


@functools.cache
def _ggml() -> ctypes.CDLL:
    folder = ggml_lib_dir()
    names = ["libggml-base.so", "libggml-base.dylib", "ggml-base.dll", "libggml.so", "libggml.dylib"]
    for name in names:
        if (folder / name).is_file():
            lib = ctypes.CDLL(str(folder / name))
            break
    else:
        raise PressoError(f"llama-cpp-python: no ggml library in {str(folder)!r}; reinstall llama-cpp-python")
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    return lib


def quantize_rows(weight: torch.Tensor, name: str, importance: torch.Tensor | None = None) -> np.ndarray:
    """Quantize a 2-D weight to ``name`` as ggml does; ``uint8 [out, row_nbytes]``.

    Args:
        weight: ``[out, in]``, any float dtype and device.
        name: one of :data:`FORMATS`.
        importance: optional ``[in]`` non-negative weights per input column (llama.cpp's
            importance matrix: the mean squared activation of each input). Ignored by formats
            outside :data:`IMPORTANCE_FORMATS`.
    """
    out_f, in_f = weight.shape
    qtype = _qtype(name)
    nbytes = row_nbytes(name, in_f)
    src = np.ascontiguousarray(weight.detach().to(device="cpu", dtype=torch.float32).numpy())
    if name == "F32":
        return src.view(np.uint8).reshape(out_f, nbytes).copy()
    dst = np.empty((out_f, nbytes), dtype=np.uint8)
    imatrix = None
    if importance is not None and name in IMPORTANCE_FORMATS:
        imatrix = np.ascontiguousarray(importance.detach().to(device="cpu", dtype=torch.float32).numpy())
        if imatrix.shape != (in_f,):
            raise PressoError(f"importance: got shape {imatrix.shape} for rows of {in_f}; allowed: [{in_f}]")
    written = _ggml().ggml_quantize_chunk(int(qtype), src.ctypes.data, dst.ctypes.data, 0, out_f, in_f,
                                          None if imatrix is None else imatrix.ctypes.data)
    if written != dst.nbytes:  # an internal invariant: ggml and gguf agree on the type's size
        raise RuntimeError(f"ggml wrote {written} bytes for {name} {tuple(weight.shape)}, expected {dst.nbytes}")
    return dst


def dequantize_rows(data: np.ndarray, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The weights a ggml runtime computes with, from :func:`quantize_rows`' bytes."""
    import gguf

    values = gguf.quants.dequantize(data, _qtype(name))
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).to(dtype)


class FormatCache:
    """Per-worker cache of quantized layers: ``(module, format, inputs) -> (blocks, weights)``.

    A study revisits the same choice for a layer many times (EvoPress-style searches change one
    or two units per child); ggml's quantizers with an importance matrix cost up to a second per
    million weights, so a revisited choice is served from here instead. The key holds everything
    the blocks depend on: the module, the format, the layer's sparsity config and the identity of
    the calibration statistics (the dense weights are the worker's own, fixed). Bounded by
    ``max_bytes`` (least recently used entries go first).
    """

    def __init__(self, max_bytes: int = 2 << 30):
        from collections import OrderedDict

        self.max_bytes = max_bytes
        self._entries: OrderedDict = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, key):
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry

    def put(self, key, packed: np.ndarray, weight: torch.Tensor) -> None:
        size = packed.nbytes + weight.numel() * weight.element_size()
        if size > self.max_bytes or key in self._entries:
            return
        self._entries[key] = (packed, weight)
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, (old_packed, old_weight) = self._entries.popitem(last=False)
            self._bytes -= old_packed.nbytes + old_weight.numel() * old_weight.element_size()
