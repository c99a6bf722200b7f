"""The compressed-tensors target: exact sizes, plain transformers loading, one-line errors."""

import pytest
import torch
from safetensors import safe_open

from presso.compress import collect_calibration, compress_
from presso.errors import PressoError
from presso.plan import AdapterConfig, LayerConfig, Plan, QuantConfig, SparsityConfig
from presso.targets import get_target

from .conftest import tiny_bert, tiny_llama


def _q(bits, group, symmetric=True):
    return LayerConfig(quant=QuantConfig(bits=bits, group_size=group, symmetric=symmetric))


MIXED = Plan(layers={
    "re:model\\.layers\\.0\\.self_attn\\..*": _q(4, 32),
    "re:model\\.layers\\.1\\.self_attn\\..*": _q(8, 64),
    "re:.*mlp\\.(gate|up)_proj": _q(4, 0),
    "re:.*mlp\\.down_proj": _q(8, 128),
})


def _write(model, plan, tmp_path, tokenizer=None):
    target = get_target("compressed-tensors")
    target.check_plan(model, plan)
    result = compress_(model, plan)
    written = target.write(model, result, tokenizer, tmp_path / "ct")
    return target, result, written


def test_mixed_formats_round_trip_exact_size_and_outputs(tmp_path):
    model = tiny_llama()
    target, result, written = _write(model, MIXED, tmp_path)
    assert written.predicted_bytes == target.predict_bytes(model, result)
    assert written.on_disk_bytes == written.predicted_bytes == (tmp_path / "ct" / "model.safetensors").stat().st_size
    loaded = target.load(written.path)
    q = loaded.model.layers[0].self_attn.q_proj
    assert q.quantization_scheme.weights.num_bits == 4  # loaded through transformers' compressed-tensors support
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (loaded(ids).logits - model(ids).logits).abs().max().item()
    assert diff <= 1e-5, diff


@pytest.mark.parametrize("method", ["gptq", "imatrix"])
def test_calibrated_methods_load_back_exactly(tmp_path, method):
    # GPTQ and imatrix choose codes (and imatrix its scales) from calibration statistics; the
    # folder must still hold exactly the trial's weights, so the space may offer them here.
    model = tiny_llama()
    calib = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(1))
    stats = collect_calibration(model, calib, hessians=True)
    plan = Plan(layers={"re:model\\.layers\\..*": LayerConfig(quant=QuantConfig(bits=4, group_size=32, symmetric=True,
                                                                               method=method))})
    target = get_target("compressed-tensors")
    target.check_plan(model, plan)
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        dense = model(ids).logits
    result = compress_(model, plan, calibration=stats)
    written = target.write(model, result, None, tmp_path / "ct")
    assert written.on_disk_bytes == written.predicted_bytes == target.predict_bytes(model, result)
    loaded = target.load(written.path)
    with torch.no_grad():
        ours, theirs = model(ids).logits, loaded(ids).logits
    assert (ours - dense).abs().max().item() > 1e-3  # the method did quantize
    assert (theirs - ours).abs().max().item() <= 1e-5


def test_one_config_group_per_format(tmp_path):
    model = tiny_llama()
    _, _, written = _write(model, MIXED, tmp_path)
    import json

    qc = json.loads((written.path / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == "pack-quantized"
    formats = sorted((g["weights"]["num_bits"], g["weights"]["group_size"] or 0, g["weights"]["strategy"])
                     for g in qc["config_groups"].values())
    assert formats == [(4, 0, "channel"), (4, 32, "group"), (8, 64, "group"), (8, 128, "group")]
    assert "lm_head" in qc["ignore"]  # vLLM wants every untargeted Linear listed
    targets = [t for g in qc["config_groups"].values() for t in g["targets"]]
    assert len(targets) == len(set(targets)) == 14


def test_packed_values_are_presso_codes_shifted(tmp_path):
    model = tiny_llama()
    _, result, written = _write(model, MIXED, tmp_path)
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    name = "model.layers.0.self_attn.q_proj"
    rec = result.modules[name]
    with safe_open(str(written.path / "model.safetensors"), framework="pt") as f:
        packed = f.get_tensor(f"{name}.weight_packed")
        scale = f.get_tensor(f"{name}.weight_scale")
    signed = unpack_from_int32(packed, 4, torch.Size(rec.shape))
    assert torch.equal(signed.to(torch.int16) + 8, rec.codes.to(torch.int16))
    assert torch.equal(scale, rec.scales.to(torch.float32))


def test_zero_points_follow_the_library_layout():
    # Written only when asked (transformers cannot load them yet): packed along dim 0, signed.
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    model = tiny_llama()
    plan = Plan(layers={"re:.*": _q(4, 32, symmetric=False)})
    result = compress_(model, plan)
    target = type(get_target("compressed-tensors"))(asymmetric=True)
    tensors = target._tensors(model, result)
    name = "model.layers.1.mlp.down_proj"
    rec = result.modules[name]
    zp = unpack_from_int32(tensors[f"{name}.weight_zero_point"], 4, rec.zeros.shape, packed_dim=0)
    assert torch.equal(zp.to(torch.int16) + 8, rec.zeros.to(torch.int16))
    assert target.predict_bytes(model, result) > get_target("compressed-tensors").predict_bytes(
        model, compress_(tiny_llama(), Plan(layers={"re:.*": _q(4, 32)})))


def test_encoder_round_trip_with_automodel(tmp_path):
    model = tiny_bert()
    plan = Plan(layers={"re:.*attention.*": _q(8, 0), "re:.*(intermediate|output)\\.dense": _q(4, 64)})
    target, _, written = _write(model, plan, tmp_path)
    assert written.on_disk_bytes == written.predicted_bytes
    loaded = target.load(written.path)
    assert type(loaded).__name__ == "BertModel"
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (loaded(ids).last_hidden_state - model(ids).last_hidden_state).abs().max().item()
    assert diff <= 1e-5, diff


@pytest.mark.parametrize(("layers", "needle"), [
    ({"re:.*": _q(3, 32)}, "quant.bits: got 3; allowed: [4, 8]"),
    ({"re:.*": _q(4, 16)}, "quant.group_size: got 16; allowed: [0, 32, 64, 128]"),
    ({"re:.*": _q(4, 32, symmetric=False)}, "quant.symmetric: got false"),
    ({"re:.*": LayerConfig(sparsity=SparsityConfig(0.5), quant=QuantConfig(bits=4, group_size=32, symmetric=True))},
     ".sparsity: got 0.5"),
    ({"re:.*": LayerConfig(quant=QuantConfig(bits=4, group_size=32, symmetric=True), adapter=AdapterConfig(rank=2))},
     ".adapter.rank: got 2"),
    ({"model.embed_tokens": _q(8, 0)}, "plan.layers['model.embed_tokens'].quant: got int8 per-channel symmetric on an embedding"),
    ({"re:.*q_proj": _q(4, 32), "re:.*[kv]_proj": _q(8, 32)}, "k_proj'].quant: got int8 g32 symmetric but"),
    ({"re:.*gate_proj": _q(4, 32)}, "up_proj'].quant: got unquantized but"),
])
def test_bad_choices_are_one_line_errors(layers, needle):
    with pytest.raises(PressoError) as info:
        get_target("compressed-tensors").check_plan(tiny_llama(), Plan(layers=layers))
    message = str(info.value)
    assert needle in message and "\n" not in message and message.startswith("target compressed-tensors: plan.layers[")


def test_write_refuses_what_check_plan_refuses(tmp_path):
    model = tiny_llama()
    result = compress_(model, Plan(layers={"re:.*": _q(4, 32, symmetric=False)}))
    with pytest.raises(PressoError, match="zero points"):
        get_target("compressed-tensors").write(model, result, None, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_write_refuses_a_quantized_embedding_table(tmp_path):
    model = tiny_llama()
    result = compress_(model, Plan(layers={"model.embed_tokens": _q(8, 0)}))
    with pytest.raises(PressoError, match="embedding table 'model.embed_tokens' is quantized"):
        get_target("compressed-tensors").predict_bytes(model, result)
