"""GPTQ inside ggml's blocks: same block scales as ggml, exactly storable codes, lower
Hessian-weighted error than ggml's rounding, and a GGUF written from a gptq plan that llama.cpp
runs like the torch model."""

import copy

import numpy as np
import pytest
import torch

from presso.compress import _formats as formats
from presso.compress import _ggml_gptq as gg
from presso.compress import collect_calibration, compress_
from presso.errors import PressoError
from presso.plan import LayerConfig, Plan, QuantConfig
from presso.plan._config import GPTQ_FORMATS
from presso.targets import get_target

from .conftest import tiny_llama
from .test_gguf import _ids
from .test_gguf import tiny_llama as gguf_llama

LINEARS = "re:model\\.layers\\..*_proj"


def _levels_values(packed, name):
    """The block values from our reading of the layout (d * level + m)."""
    _, levels, _ = gg._LAYOUTS[name]
    d, m = gg.block_scales(packed, name)
    q = gg.read_codes(packed, name)
    value = levels[q].astype(np.float32) * np.repeat(d, 32, axis=1)
    return value + (0 if m is None else np.repeat(m, 32, axis=1))


@pytest.mark.parametrize("name", GPTQ_FORMATS)
def test_block_layouts_match_ggml_dequantization(name):
    import gguf

    weight = torch.randn(8, 128, generator=torch.Generator().manual_seed(3))
    weight[0, :32] = 0.0  # an all-zero block (d = 0)
    packed = formats.quantize_rows(weight, name)
    reference = gguf.quants.dequantize(packed, gguf.GGMLQuantizationType[name])
    np.testing.assert_array_equal(_levels_values(packed, name), reference)
    np.testing.assert_array_equal(gg.write_codes(packed, name, gg.read_codes(packed, name)), packed)


@pytest.mark.parametrize("name", GPTQ_FORMATS)
def test_gptq_keeps_ggml_scales_stores_exactly_and_lowers_the_hessian_error(name):
    import gguf

    dense = tiny_llama()
    ids = torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(1))
    calibration = collect_calibration(dense, ids, hessians=True)
    results = {}
    for method in ("rtn", "gptq"):
        model = copy.deepcopy(dense)
        plan = Plan(layers={LINEARS: LayerConfig(quant=QuantConfig(format=name, method=method))})
        results[method] = (model, compress_(model, plan, calibration=calibration))
    (_, rtn), (model, gptq) = results["rtn"], results["gptq"]
    errors = {"rtn": 0.0, "gptq": 0.0}
    lower = 0
    for layer, rec in gptq.modules.items():
        assert rec.format == name
        base = rtn.modules[layer].packed
        for field, ours in zip(("d", "m"), gg.block_scales(rec.packed, name)):
            if ours is not None:
                np.testing.assert_array_equal(ours, gg.block_scales(base, name)[("d", "m").index(field)])
        weight = model.get_submodule(layer).weight
        stored = gguf.quants.dequantize(rec.packed, gguf.GGMLQuantizationType[name]).reshape(weight.shape)
        assert torch.equal(weight, torch.from_numpy(np.ascontiguousarray(stored, dtype=np.float32)))
        W = dense.get_submodule(layer).weight.detach()
        H = calibration.hessians[layer]
        layer_errors = {}
        for method, packed in (("rtn", base), ("gptq", rec.packed)):
            diff = W - formats.dequantize_rows(packed, name).reshape(W.shape)
            layer_errors[method] = float(torch.trace(diff @ H @ diff.T))
            errors[method] += layer_errors[method]
        lower += layer_errors["gptq"] < layer_errors["rtn"]
    assert lower > len(gptq.modules) // 2
    assert errors["gptq"] < errors["rtn"]


def test_a_gguf_from_a_gptq_plan_runs_in_llama_cpp_like_torch(tmp_path):
    model = gguf_llama(tmp_path)
    plan = Plan(layers={
        "re:.*mlp.down_proj": LayerConfig(quant=QuantConfig(format="Q4_K")),
        "re:.*self_attn.*": LayerConfig(quant=QuantConfig(format="Q8_0", method="gptq")),
        "re:.*mlp.gate_proj": LayerConfig(quant=QuantConfig(format="Q4_0", method="gptq")),
        "re:.*mlp.up_proj": LayerConfig(quant=QuantConfig(format="IQ4_NL", method="gptq")),
        "model.embed_tokens": LayerConfig(quant=QuantConfig(format="Q5_1")),
    })
    target = get_target("gguf")
    target.check_plan(model, plan)
    compressed = copy.deepcopy(model)
    result = compress_(compressed, plan, calibration=collect_calibration(model, _ids(4, 32, seed=2), hessians=True))
    written = target.write(compressed, result, None, tmp_path / "gptq.gguf")
    assert written.on_disk_bytes == written.predicted_bytes
    ids = _ids()
    runtime = target.load(written.path, n_ctx=64, n_threads=1)
    with torch.no_grad(), target.emulate(compressed, result):
        expected = compressed(input_ids=ids).logits
    got = runtime(input_ids=ids).logits
    # the tolerances of test_gguf's file test (8-bit activations, fp16 KV cache)
    assert (got - expected).abs().max().item() < 0.05 * expected.abs().max().item()
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean().item() > 0.85


def test_gptq_with_a_k_quant_or_float_format_is_a_one_line_error():
    for name in ("Q4_K", "F16"):
        with pytest.raises(PressoError, match=r"quant.format: got '.*' with method 'gptq'; allowed: \['Q8_0'") as info:
            QuantConfig(format=name, method="gptq")
        assert "\n" not in str(info.value)
    with pytest.raises(PressoError, match="quant.method: got 'imatrix' with format 'Q4_0'; allowed: 'rtn' or 'gptq'"):
        QuantConfig(format="Q4_0", method="imatrix")


def test_spaces_check_each_method_with_each_format_and_the_gguf_spaces_offer_gptq():
    from presso.spaces import load_space

    with pytest.raises(PressoError, match=r"space.groups\['down'\].format: quant.format: got 'Q4_K' with method 'gptq'"):
        load_space({"groups": [{"name": "down", "modules": ["model.layers.*.mlp.down_proj"],
                                "format": ["Q8_0", "Q4_K"], "method": ["rtn", "gptq"]}]})
    for builtin, groups in (("smollm2-135m-gguf", {"mlp", "attn"}), ("minilm-l6-gguf", {"attn", "ffn_up"})):
        space = load_space(f"builtin:{builtin}")
        assert {g.name for g in space.groups if "gptq" in g.method.grid()} == groups


def test_gptq_on_an_embedding_table_is_a_one_line_error():
    dense = tiny_llama()
    calibration = collect_calibration(dense, torch.randint(0, 256, (2, 16)), hessians=True)
    plan = Plan(layers={"model.embed_tokens": LayerConfig(quant=QuantConfig(format="Q8_0", method="gptq"))})
    with pytest.raises(PressoError, match=r"embed_tokens'\]\.quant\.method: got 'gptq' .* allowed: 'rtn'"):
        compress_(copy.deepcopy(dense), plan, calibration=calibration)
