"""Which ggml CPU kernel llama.cpp multiplies each weight with, asked of the ggml it runs.

A weight's matmul in ggml's CPU backend takes one of two paths:

* **repacked**: at load, llama.cpp moves a weight into the ``CPU_REPACK`` buffer when ggml has an
  interleaved kernel for its type on this CPU (``ggml_repack_get_optimal_repack_type`` in
  ``ggml-cpu/repack.cpp``) and its row count fits the interleave; those run blocked GEMM/GEMV
  kernels (``q4_0 8x8 x q8_0``, ...);
* **vec_dot**: everything else runs ``vec_dot`` over rows, with the activations first converted
  to the type's ``vec_dot_type`` (read from ggml's own CPU type traits); where ggml is built
  with llamafile's tinyBLAS (``LLAMAFILE = 1`` in llama.cpp's system info), a batch of two or
  more tokens (prompt processing) of F32, F16, BF16, Q8_0, Q4_0, Q5_0 or IQ4_NL runs its
  ``sgemm`` instead, and single-token decode stays on ``vec_dot``.

ggml exposes the CPU features and the type traits, but not the repack choice (a static C++
function), so :data:`_REPACK` (and :data:`_SGEMM`) mirror its tables for the CPUs it names (llama.cpp as vendored by
llama-cpp-python 0.3.36). A test checks the mirror against the runtime: the bytes this module
says go to ``CPU_REPACK`` must equal the ``CPU_REPACK`` buffer llama.cpp reports at load.
Embedding tables are read with ``GET_ROWS`` (no matmul). A tied output head is the embedding
table used as a matmul weight: llama.cpp loads a second copy of the table for it, repacked when
its type allows (so a tied, repackable table costs its bytes twice in memory, once in the file).
"""

from __future__ import annotations

import ctypes
import functools

from torch import nn

from presso.compress import ggml_lib_dir

# (type, CPU feature, interleave "RxC", vec_dot_type, rows must be a multiple of): the x86 and
# Arm rows of ggml_repack_get_optimal_repack_type, first match wins.
_REPACK: tuple[tuple[str, str, str, str, int], ...] = (
    ("Q4_0", "avx2", "8x8", "Q8_0", 8), ("Q4_0", "neon+i8mm", "4x8", "Q8_0", 4), ("Q4_0", "neon+dotprod", "4x4", "Q8_0", 4),
    ("Q4_K", "avx2", "8x8", "Q8_K", 8), ("Q4_K", "neon+i8mm", "8x8", "Q8_K", 8), ("Q4_K", "neon+dotprod", "8x4", "Q8_K", 8),
    ("Q2_K", "avx512", "8x8", "Q8_K", 8),
    ("Q5_K", "neon+i8mm", "8x8", "Q8_K", 8), ("Q5_K", "neon+dotprod", "8x4", "Q8_K", 8),
    ("Q6_K", "neon+i8mm", "8x8", "Q8_K", 8), ("Q6_K", "neon+dotprod", "8x4", "Q8_K", 8),
    ("IQ4_NL", "avx2", "8x8", "Q8_0", 8), ("IQ4_NL", "neon+dotprod", "4x4", "Q8_0", 4),
    ("Q8_0", "neon+i8mm", "4x8", "Q8_0", 4), ("Q8_0", "neon+dotprod", "4x4", "Q8_0", 4),
)

# llamafile_sgemm's types (ggml-cpu/llamafile/sgemm.cpp) by the CPU feature its kernels need.
_SGEMM: tuple[tuple[str, frozenset[str]], ...] = (
    ("avx", frozenset({"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q5_0", "IQ4_NL"})),
    ("neon+dotprod", frozenset({"F32", "Q8_0", "Q4_0"})),
)


class _TypeTraitsCpu(ctypes.Structure):
    _fields_ = [("from_float", ctypes.c_void_p), ("vec_dot", ctypes.c_void_p),
                ("vec_dot_type", ctypes.c_int), ("nrows", ctypes.c_int64)]


@functools.cache
def _ggml_cpu() -> ctypes.CDLL:
    folder = ggml_lib_dir()
    for name in ("libggml-cpu.so", "libggml-cpu.dylib", "ggml-cpu.dll"):
        if (folder / name).is_file():
            lib = ctypes.CDLL(str(folder / name))
            lib.ggml_get_type_traits_cpu.restype = ctypes.POINTER(_TypeTraitsCpu)
            lib.ggml_get_type_traits_cpu.argtypes = [ctypes.c_int]
            return lib
    raise RuntimeError(f"llama-cpp-python: no ggml CPU backend in {str(folder)!r}; reinstall llama-cpp-python")


@functools.cache
def cpu_features() -> frozenset[str]:
    """The features of this CPU that ggml's CPU backend was built to use."""
    lib = _ggml_cpu()
    has = {name for name in ("avx", "avx2", "avx512", "neon", "dotprod", "matmul_int8", "llamafile")
           if getattr(lib, f"ggml_cpu_has_{name}")()}
    if {"neon", "matmul_int8"} <= has:
        has.add("neon+i8mm")
    if {"neon", "dotprod"} <= has:
        has.add("neon+dotprod")
    return frozenset(has)


@functools.cache
def vec_dot_type(fmt: str) -> str:
    """The type ggml converts activations to before ``vec_dot`` with a ``fmt`` weight."""
    import gguf

    traits = _ggml_cpu().ggml_get_type_traits_cpu(int(gguf.GGMLQuantizationType[fmt])).contents
    return gguf.GGMLQuantizationType(traits.vec_dot_type).name


def repacked(fmt: str, out_features: int) -> tuple[str, str] | None:
    """``(interleave, vec_dot_type)`` when llama.cpp repacks a ``fmt`` weight of ``out_features`` rows."""
    features = cpu_features()
    for type_, feature, interleave, activations, multiple in _REPACK:
        if type_ == fmt and feature in features and out_features % multiple == 0:
            return interleave, activations
    return None


def matmul_kernel(fmt: str, out_features: int) -> str:
    """The kernel a ``[out_features, in]`` weight stored as ``fmt`` runs with, in words."""
    repack = repacked(fmt, out_features)
    if repack is not None:
        return f"CPU_REPACK {fmt.lower()} {repack[0]} x {repack[1].lower()}"
    pair = f"{fmt.lower()} x {vec_dot_type(fmt).lower()}"
    features = cpu_features()
    if "llamafile" in features and any(f in features and fmt in types for f, types in _SGEMM):
        return f"CPU llamafile sgemm (prompt) / vec_dot (decode) {pair}"
    return f"CPU vec_dot {pair}"


def _format(result, name: str) -> str:
    """The ggml type ``result`` stores module ``name`` as (F32 when the plan leaves it alone)."""
    rec = result.modules.get(name)
    return rec.format if rec is not None and rec.format is not None else "F32"


def _matmul_formats(model, result) -> dict[str, tuple[str, str | None]]:
    """``{Linear: (format, tied table or None)}``: the ggml type each matmul weight is stored as
    (a tied head is the table's type; a module the plan leaves alone is F32)."""
    embeddings = {id(m.weight): name for name, m in model.named_modules() if isinstance(m, nn.Embedding)}
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            table = embeddings.get(id(module.weight))
            out[name] = (_format(result, table if table is not None else name), table)
    return out


def activation_types(model, result) -> dict[str, str]:
    """``{Linear: vec_dot_type}``: what ggml rounds each matmul's activations to (every kernel,
    repacked, llamafile or vec_dot, takes the weight type's ``vec_dot_type``)."""
    return {name: vec_dot_type(fmt) for name, (fmt, _) in _matmul_formats(model, result).items()}


def layer_kernels(model, result) -> dict[str, str]:
    """``{module: kernel}`` for every weight matrix of ``model`` as ``result`` stores it in a GGUF."""
    kernels = {name: f"CPU get_rows {_format(result, name).lower()}"
               for name, m in model.named_modules() if isinstance(m, nn.Embedding)}
    for name, (fmt, table) in _matmul_formats(model, result).items():
        kernel = matmul_kernel(fmt, model.get_submodule(name).weight.shape[0])
        kernels[name] = kernel if table is None else f"{kernel} (tied: a second copy of {table})"
    return kernels
