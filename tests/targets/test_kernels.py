"""Each target says which kernel its runtime multiplies each weight with; for gguf the claim is
checked against llama.cpp itself (the bytes it moves into its repacked-kernel buffer)."""

import copy
import ctypes
import re

import torch

from presso.compress import compress_
from presso.models import smollm2_gguf_path
from presso.plan import LayerConfig, Plan, QuantConfig
from presso.targets import get_target
from presso.targets import kernel_counts
from presso.targets._ggml_kernels import cpu_features, repacked

from .conftest import tiny_llama


def _llama_with_odd_rows(tmp_path):
    """Rows of 512 values (K-quants fit) and an MLP of 1028 rows (not a multiple of 8: no repack)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=512, intermediate_size=1028, num_hidden_layers=1,
                         num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=True, initializer_range=0.1)
    model = LlamaForCausalLM(config).eval()
    (tmp_path / "tokenizer.gguf").symlink_to(smollm2_gguf_path())
    model.config._name_or_path = str(tmp_path)
    return model


def _q(fmt):
    return LayerConfig(quant=QuantConfig(format=fmt))


PLAN = Plan(layers={"re:.*q_proj": _q("Q4_0"), "re:.*gate_proj": _q("Q4_0"), "re:.*up_proj": _q("Q4_K"),
                    "re:.*o_proj": _q("Q4_K"), "re:.*k_proj": _q("IQ4_NL"), "re:.*v_proj": _q("Q8_0"),
                    "model.embed_tokens": _q("Q4_0")})


def _repack_buffer_mib(path) -> float:
    """The CPU_REPACK buffer llama.cpp reports while loading ``path`` (0 when it makes none)."""
    import llama_cpp

    lines = []

    @llama_cpp.llama_log_callback
    def capture(level, text, user_data):
        lines.append(text.decode(errors="replace"))

    llama_cpp.llama_log_set(capture, ctypes.c_void_p(0))
    try:
        llama_cpp.Llama(model_path=str(path), n_ctx=16, verbose=True)
    finally:
        llama_cpp.llama_log_set(ctypes.cast(None, llama_cpp.llama_log_callback), ctypes.c_void_p(0))
    sizes = [float(m.group(1)) for line in lines if (m := re.search(r"CPU_REPACK model buffer size =\s*([\d.]+) MiB", line))]
    return sum(sizes)


def test_gguf_kernels_match_the_bytes_llama_cpp_repacks(tmp_path):
    model = _llama_with_odd_rows(tmp_path)
    compressed = copy.deepcopy(model)
    result = compress_(compressed, PLAN)
    target = get_target("gguf")
    written = target.write(compressed, result, None, tmp_path / "k.gguf")
    kernels = target.kernels(compressed, result)
    gate = kernels["model.layers.0.mlp.gate_proj"]
    assert gate.endswith("q4_0 x q8_0") and not gate.startswith("CPU_REPACK")  # 1028 rows: no repack
    assert kernels["model.layers.0.mlp.down_proj"].endswith("f32 x f32")
    assert kernels["model.layers.0.mlp.up_proj"] == "CPU vec_dot q4_k x q8_k"  # no repack, no sgemm for Q4_K
    assert kernels["model.embed_tokens"] == "CPU get_rows q4_0"
    assert kernels["lm_head"].endswith("(tied: a second copy of model.embed_tokens)")
    # The bytes this module says go to repacked kernels (the tied head's copy included) are the
    # bytes llama.cpp puts in its CPU_REPACK buffer: a wrong rule moves a whole tensor.
    predicted = sum(rec.packed.nbytes for rec in result.modules.values()
                    if repacked(rec.format, rec.packed.shape[0]) is not None)  # the table: its tied head's copy
    if "avx2" in cpu_features():
        assert predicted > 0  # Q4_0 / Q4_K / IQ4_NL with rows in multiples of 8 repack on AVX2
    assert abs(_repack_buffer_mib(written.path) - predicted / 2**20) < 0.006


def test_kernel_counts_are_compact_and_cover_every_linear(tmp_path):
    model = tiny_llama()
    compressed = copy.deepcopy(model)
    plan = Plan(layers={"re:.*mlp.*": LayerConfig(quant=QuantConfig(bits=4, group_size=32, symmetric=True))})
    result = compress_(compressed, plan)
    kernels = get_target("compressed-tensors").kernels(compressed, result)
    linears = [n for n, m in compressed.named_modules() if isinstance(m, torch.nn.Linear)]
    assert sorted(kernels) == sorted(linears)
    assert "int4" in kernels["model.layers.0.mlp.up_proj"] and "ignore" in kernels["lm_head"]
    counts = kernel_counts(kernels)
    assert sum(counts.values()) == len(linears) and len(counts) == 2
