import copy
import json
import os

import pytest
import torch
from safetensors import safe_open

from presso.compress import (
    TeacherCache,
    collect_calibration,
    compress_,
    load_compressed,
    predict_size,
    save_compressed,
)
from presso.errors import PressoError
from presso.plan import AdapterConfig, LayerConfig, Plan, QuantConfig, RecoveryConfig, SparsityConfig

from .conftest import CPU_AND_GPU, outputs, tiny_bert, tiny_llama

PLANS = {
    "8bit": {"re:.*": LayerConfig(quant=QuantConfig(bits=8))},
    "4bit-g32-sym": {"re:.*": LayerConfig(quant=QuantConfig(bits=4, group_size=32, symmetric=True))},
    "3bit-sparse": {"re:.*": LayerConfig(sparsity=SparsityConfig(0.5), quant=QuantConfig(bits=3, group_size=16))},
    "2:4+8bit": {"re:.*": LayerConfig(sparsity=SparsityConfig(structure="2:4"), quant=QuantConfig(bits=8))},
    "sparse-fp": {"re:.*": LayerConfig(sparsity=SparsityConfig(0.4))},
    "mixed+adapters": {
        "re:.*layers?\\.0\\..*": LayerConfig(sparsity=SparsityConfig(0.1), quant=QuantConfig(bits=5, group_size=32),
                                             adapter=AdapterConfig(rank=4)),
        "re:.*layers?\\.1\\..*": LayerConfig(quant=QuantConfig(bits=7), adapter=AdapterConfig(rank=2)),
    },
}


def _compress(make, layers, ids, steps=0):
    model = make()
    teacher = TeacherCache.build(model, ids, top_k=8) if steps else None
    plan = Plan(layers=layers, recovery=RecoveryConfig(steps=steps, lr=1e-2, batch_size=4))
    return model, compress_(model, plan, teacher=teacher)


@pytest.mark.parametrize("plan_name", list(PLANS))
@pytest.mark.parametrize("make", [tiny_llama, tiny_bert], ids=["llama", "bert"])
def test_save_load_round_trip_is_exact_and_size_predicted(make, plan_name, ids, tokenizer, tmp_path):
    model, result = _compress(make, PLANS[plan_name], ids, steps=3 if "adapters" in plan_name else 0)
    predicted = predict_size(model, result, tokenizer)
    report = save_compressed(model, result, tokenizer, tmp_path / "out")
    on_disk = sum(p.stat().st_size for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert report.on_disk_bytes == on_disk
    assert report.predicted_bytes == predicted.total_bytes
    assert abs(on_disk - predicted.total_bytes) <= 0.01 * predicted.total_bytes
    # In fact exact, except that a fast tokenizer's saved truncation/padding state may change
    # once it has been called, after its files were measured (a few hundred bytes).
    assert os.path.getsize(tmp_path / "out" / "model.safetensors") == predicted.file_bytes
    for name in ("config.json", "presso_plan.yaml", "presso_manifest.json"):
        assert report.files[name] == predicted.side_bytes[name], name
    assert not list(tmp_path.glob(".out.tmp-*"))

    loaded, tok, plan = load_compressed(tmp_path / "out")
    assert plan == result.plan
    assert tok is not None and tok("hello world")["input_ids"] == tokenizer("hello world")["input_ids"]
    assert type(loaded) is type(model)
    assert torch.equal(outputs(loaded, ids), outputs(model, ids))


def test_file_holds_bit_packed_codes_and_tied_weights_once(ids, tmp_path):
    model, result = _compress(tiny_llama, PLANS["3bit-sparse"], ids)
    save_compressed(model, result, None, tmp_path / "out")
    with safe_open(str(tmp_path / "out" / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        meta = json.loads(f.metadata()["presso"])
        codes = f.get_tensor("model.layers.0.mlp.up_proj.weight.codes")
        mask = f.get_tensor("model.layers.0.mlp.up_proj.weight.mask")
    assert "lm_head.weight" not in keys and meta["aliases"] == {"lm_head.weight": "model.embed_tokens.weight"}
    assert "model.layers.0.mlp.up_proj.weight" not in keys
    numel = 128 * 64
    assert mask.numel() == numel // 8
    assert codes.dtype == torch.uint8 and codes.numel() == (numel // 2 * 3 + 7) // 8  # only kept codes, 3 bits each
    assert meta["modules"]["model.layers.0.mlp.up_proj"]["encoding"] == "sparse"
    loaded = load_compressed(tmp_path / "out").model
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight  # tied again after loading


def test_sparse_encoding_only_when_smaller(ids):
    layers = {"re:.*": LayerConfig(sparsity=SparsityConfig(0.1), quant=QuantConfig(bits=8))}
    model, result = _compress(tiny_llama, layers, ids)
    size = result.size.modules["model.layers.0.mlp.up_proj"]
    assert size.mask_bytes == 0 and size.codes_bytes == 128 * 64  # 1 + 0.9 * 8 bits > 8 bits: dense codes
    layers = {"re:.*": LayerConfig(sparsity=SparsityConfig(0.5), quant=QuantConfig(bits=8))}
    model, result = _compress(tiny_llama, layers, ids)
    size = result.size.modules["model.layers.0.mlp.up_proj"]
    assert size.mask_bytes == 128 * 64 // 8 and size.codes_bytes == 128 * 64 // 2


def test_size_report_accounting(ids):
    dense_model = tiny_llama()
    dense_bytes = sum(p.numel() * 4 for p in dense_model.parameters())  # tied embedding listed once
    model, result = _compress(tiny_llama, PLANS["4bit-g32-sym"], ids)
    size = result.size
    assert size.dense_bytes == dense_bytes
    up = size.modules["model.layers.0.mlp.up_proj"]
    assert up.dense_bytes == 128 * 64 * 4
    assert up.codes_bytes == 128 * 64 // 2 and up.scales_bytes == 128 * 2 * 2 and up.zeros_bytes == 0
    assert size.covered_fraction == pytest.approx((4 + 16 / 32) / 32)
    assert 0 < size.size_fraction < 1 and size.total_bytes > size.file_bytes > size.tensor_bytes


def test_refuses_to_overwrite_unless_forced(ids, tmp_path):
    model, result = _compress(tiny_bert, PLANS["8bit"], ids)
    save_compressed(model, result, None, tmp_path / "out")
    with pytest.raises(PressoError, match="already exists"):
        save_compressed(model, result, None, tmp_path / "out")
    (tmp_path / "out" / "stale.txt").write_text("old")
    save_compressed(model, result, None, tmp_path / "out", force=True)
    assert not (tmp_path / "out" / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize(
    "damage, file",
    [
        ("flip", "model.safetensors"),
        ("truncate", "model.safetensors"),
        ("delete", "config.json"),
        ("flip", "presso_plan.yaml"),
        ("delete", "presso_manifest.json"),
    ],
)
def test_tampered_or_incomplete_directory_is_rejected(damage, file, ids, tmp_path):
    model, result = _compress(tiny_bert, PLANS["4bit-g32-sym"], ids)
    out = tmp_path / "out"
    save_compressed(model, result, None, out)
    path = out / file
    if damage == "delete":
        path.unlink()
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:-10])
    else:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    with pytest.raises(PressoError) as err:
        load_compressed(out)
    assert file in str(err.value)


def test_load_missing_directory(tmp_path):
    with pytest.raises(PressoError, match="not a directory"):
        load_compressed(tmp_path / "nope")


@pytest.mark.parametrize("device", CPU_AND_GPU)
def test_round_trip_on_device(device, ids, tmp_path):
    model = tiny_llama().to(device)
    ids = ids.to(device)
    stats = collect_calibration(model, ids)
    teacher = TeacherCache.build(model, ids, top_k=8)
    plan = Plan(layers=PLANS["mixed+adapters"] | {"re:.*o_proj": LayerConfig(
        sparsity=SparsityConfig(structure="2:4"), quant=QuantConfig(bits=3, group_size=32))},
        criterion="wanda", recovery=RecoveryConfig(steps=3, batch_size=2))
    result = compress_(model, plan, calibration=stats, teacher=teacher)
    report = save_compressed(model, result, None, tmp_path / "out")
    assert report.on_disk_bytes == report.predicted_bytes
    loaded = load_compressed(tmp_path / "out", device=device).model
    assert next(loaded.parameters()).device.type == device
    assert torch.equal(outputs(loaded, ids), outputs(model, ids))
    # a loaded model is marked compressed too
    with pytest.raises(PressoError, match="already compressed"):
        compress_(loaded, plan)


def test_deepcopy_per_trial_leaves_dense_model_intact(ids):
    dense = tiny_llama()
    reference = outputs(dense, ids)
    trial = copy.deepcopy(dense)
    compress_(trial, Plan(layers=PLANS["3bit-sparse"]))
    assert torch.equal(outputs(dense, ids), reference)
