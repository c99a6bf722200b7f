"""The gguf target on tiny Llama models: exact file sizes, llama.cpp loads the file, and its
logits equal the torch model's up to llama.cpp's own activation rounding."""

import copy

import numpy as np
import pytest
import torch

from presso.compress import collect_calibration, compress_
from presso.compress import _formats as formats
from presso.errors import PressoError
from presso.models import smollm2_gguf_path
from presso.plan import LayerConfig, Plan, QuantConfig, SparsityConfig
from presso.targets import get_target

VOCAB = 49152  # SmolLM2's tokenizer: the file takes its tokenizer.* keys from SmolLM2's GGUF


def tiny_llama(tmp_path, tied=True, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    # hidden 64: rows of 64 take only the 32-blocks; intermediate 256: down_proj takes K-quants.
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=tied, initializer_range=0.1, rms_norm_eps=1e-5)
    model = LlamaForCausalLM(config).eval()
    (tmp_path / "tokenizer.gguf").symlink_to(smollm2_gguf_path())
    model.config._name_or_path = str(tmp_path)
    return model


def _ids(rows=2, width=24, seed=1):
    return torch.randint(0, VOCAB, (rows, width), generator=torch.Generator().manual_seed(seed))


MIXED = Plan(layers={
    "re:.*mlp.down_proj": LayerConfig(quant=QuantConfig(format="Q4_K")),
    "re:.*self_attn.*": LayerConfig(quant=QuantConfig(format="Q8_0")),
    "re:.*mlp.gate_proj": LayerConfig(quant=QuantConfig(format="Q4_0")),
    "re:.*mlp.up_proj": LayerConfig(quant=QuantConfig(format="IQ4_NL")),
    "model.embed_tokens": LayerConfig(quant=QuantConfig(format="Q5_1")),
})


@pytest.mark.parametrize("tied", [True, False])
def test_written_file_has_the_predicted_bytes_and_llama_cpp_reproduces_the_logits(tmp_path, tied):
    model = tiny_llama(tmp_path, tied=tied)
    target = get_target("gguf")
    target.check_plan(model, MIXED)
    compressed = copy.deepcopy(model)
    result = compress_(compressed, MIXED, calibration=collect_calibration(model, _ids(4, 32, seed=2)))
    written = target.write(compressed, result, None, tmp_path / "out.gguf")
    assert written.on_disk_bytes == written.predicted_bytes == target.predict_bytes(compressed, result)
    assert written.predicted_bytes < target.dense_bytes(model)
    ids = _ids()
    runtime = target.load(written.path, n_ctx=64, n_threads=1)
    with torch.no_grad():
        float_activations = compressed(input_ids=ids).logits
        with target.emulate(compressed, result):
            expected = compressed(input_ids=ids).logits
        assert torch.equal(compressed(input_ids=ids).logits, float_activations)  # the hooks are gone
    got = runtime(input_ids=ids).logits
    # llama.cpp rounds activations to 8 bits before quantized matmuls; the trial, inside
    # emulate(), does the same. What is left: float summation order and the F16 KV cache, whose
    # tiny differences flip some 8-bit roundings (on this random model: mean error 0.0131 with
    # emulation, 0.0154 without; seeds 1 and 2: 0.0156 vs 0.0172, 0.0129 vs 0.0144).
    scale = expected.abs().max().item()
    assert (got - expected).abs().max().item() < 0.05 * scale
    assert (got - expected).abs().mean().item() < 0.95 * (got - float_activations).abs().mean().item()
    agree = (got.argmax(-1) == expected.argmax(-1)).float().mean().item()
    assert agree > 0.85  # measured 0.90 (untied) on near-tied logits of a random model


def test_an_unquantized_file_matches_torch_to_float_rounding(tmp_path):
    model = tiny_llama(tmp_path)
    target = get_target("gguf")
    result = compress_(copy.deepcopy(model), Plan())
    written = target.write(model, result, None, tmp_path / "f32.gguf")
    assert written.on_disk_bytes == target.dense_bytes(model)
    ids = _ids()
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    got = target.load(written.path, n_ctx=64, n_threads=1)(input_ids=ids).logits
    # llama.cpp keeps its KV cache in fp16: agreement to about 1e-3, not to the bit.
    assert torch.allclose(got, expected, atol=5e-3, rtol=1e-3)


def test_format_weights_are_the_dequantized_ggml_blocks(tmp_path):
    model = tiny_llama(tmp_path)
    compressed = copy.deepcopy(model)
    result = compress_(compressed, MIXED, calibration=collect_calibration(model, _ids(4, 32, seed=2)))
    rec = result.modules["model.layers.0.mlp.down_proj"]
    assert rec.format == "Q4_K" and rec.packed.shape == (64, formats.row_nbytes("Q4_K", 256))
    weight = compressed.get_submodule("model.layers.0.mlp.down_proj").weight
    assert torch.equal(weight, formats.dequantize_rows(rec.packed, "Q4_K").reshape(weight.shape))


@pytest.mark.parametrize("name", ["Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0"])
def test_ggml_blocks_equal_the_gguf_reference_quantizer(name):
    import gguf

    weight = torch.randn(16, 128, generator=torch.Generator().manual_seed(0))
    ours = formats.quantize_rows(weight, name)
    reference = gguf.quants.quantize(weight.numpy(), gguf.GGMLQuantizationType[name])
    assert np.array_equal(ours, reference.view(np.uint8).reshape(ours.shape))


def test_importance_matrix_lowers_the_weighted_error():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(64, 256, generator=generator)
    importance = torch.rand(256, generator=generator) ** 4  # a few columns matter most
    def weighted_error(data):
        err = formats.dequantize_rows(data, "Q3_K") - weight
        return float((err.pow(2) * importance).sum())
    plain = weighted_error(formats.quantize_rows(weight, "Q3_K"))
    weighted = weighted_error(formats.quantize_rows(weight, "Q3_K", importance))
    assert weighted < plain


def test_bad_choices_are_one_line_errors(tmp_path):
    model = tiny_llama(tmp_path)
    target = get_target("gguf")
    cases = [
        (Plan(layers={"re:.*self_attn.q_proj": LayerConfig(quant=QuantConfig(format="Q4_K"))}), "Q4_K"),
        (Plan(layers={"re:.*mlp.*": LayerConfig(sparsity=SparsityConfig(amount=0.5))}), "sparsity"),
        (Plan(layers={"re:.*mlp.*": LayerConfig(quant=QuantConfig(bits=4, group_size=32))}), "quant.format"),
    ]
    for plan, word in cases:
        with pytest.raises(PressoError) as info:
            target.check_plan(model, plan)
        message = str(info.value)
        assert word in message and "\n" not in message and "allowed" in message
    with pytest.raises(PressoError, match="quant.format: got 'Q4_X'"):
        QuantConfig(format="Q4_X")
    with pytest.raises(PressoError, match="not both"):
        QuantConfig(format="Q4_0", bits=4)


def test_space_formats_are_checked_against_the_target(tmp_path):
    from presso.compress import compressible_modules, embedding_modules
    from presso.search._evaluator import check_space_for_target
    from presso.spaces import load_space

    model = tiny_llama(tmp_path)
    space = load_space({"groups": [{"name": "attn", "modules": ["model.layers.*.self_attn.*_proj"],
                                    "format": ["Q8_0", "Q4_K"]}]})
    bound = space.bind(list(compressible_modules(model)), exact_names=list(embedding_modules(model)))
    with pytest.raises(PressoError, match=r"'Q4_K' does not fit module 'model.layers.0.self_attn.q_proj'.*offers there"):
        check_space_for_target(bound, model, get_target("gguf"))
    with pytest.raises(PressoError, match="takes bits/group_size"):
        check_space_for_target(bound, model, get_target("presso"))


def test_plans_with_formats_round_trip_and_old_plans_read_the_same(tmp_path):
    from presso.plan import load_plan, plan_to_dict, save_plan

    save_plan(MIXED, tmp_path / "p.yaml")
    assert load_plan(tmp_path / "p.yaml") == MIXED
    old = plan_to_dict(Plan(layers={"re:.*": LayerConfig(quant=QuantConfig(bits=4, group_size=32))}))
    assert "format" not in old["_data"]["layers"]["re:.*"]["quant"] and "target" not in old["_data"]


def test_llama_decode_latency_is_measured_on_the_trials_gguf(tmp_path):
    from presso.objectives import EvalContext, TrialContext, get_objective
    from presso.objectives import COMPRESSION_KEY

    model = tiny_llama(tmp_path)
    compressed = copy.deepcopy(model)
    result = compress_(compressed, MIXED, calibration=collect_calibration(model, _ids(4, 32, seed=2)))
    objective = get_objective("llama_decode_ms")
    ctx = EvalContext(task="causal-lm", device="cpu", input_ids=_ids(2, 32), dense_model=model)
    trial = TrialContext(size_bytes=1, dense_bytes=2)
    trial.cache[COMPRESSION_KEY] = result
    ms = objective.compute(compressed, ctx, trial)
    assert 0 < ms < 10_000 and trial.cache["llama_prompt_tok_s"] > 0
    rtn = compress_(copy.deepcopy(model), Plan(layers={"re:.*": LayerConfig(quant=QuantConfig(bits=4, group_size=32))}))
    trial.cache[COMPRESSION_KEY] = rtn
    with pytest.raises(PressoError, match="target: gguf"):
        objective.compute(compressed, ctx, trial)


def test_format_bits_table_matches_gguf():
    from presso.plan._config import FORMAT_BITS, STORAGE_FORMATS

    assert set(FORMAT_BITS) == set(STORAGE_FORMATS)
    for name, bits in FORMAT_BITS.items():
        assert bits == formats.bits_per_weight(name), name


def test_a_revisited_layer_choice_is_served_from_the_cache_with_the_same_blocks(tmp_path):
    model = tiny_llama(tmp_path)
    stats = collect_calibration(model, _ids(4, 32, seed=2))
    cache = formats.FormatCache()
    first = compress_(copy.deepcopy(model), MIXED, calibration=stats, format_cache=cache)
    assert cache.hits == 0 and cache.misses == len(first.modules)
    again_model = copy.deepcopy(model)
    again = compress_(again_model, MIXED, calibration=stats, format_cache=cache)
    assert cache.hits == len(again.modules)
    fresh_model = copy.deepcopy(model)
    fresh = compress_(fresh_model, MIXED, calibration=stats)
    for name, rec in fresh.modules.items():
        assert np.array_equal(rec.packed, again.modules[name].packed), name
    assert all(torch.equal(a, b) for a, b in zip(fresh_model.state_dict().values(), again_model.state_dict().values()))
