import copy

import pytest
import torch

from presso.compress import (
    TeacherCache,
    collect_calibration,
    compress_,
    compressible_modules,
    dequantize,
)
from presso.errors import PressoError
from presso.plan import AdapterConfig, LayerConfig, Plan, QuantConfig, RecoveryConfig, SparsityConfig

from .conftest import CPU_AND_GPU, outputs, tiny_bert, tiny_llama


def test_compressible_modules_llama(llama):
    names = list(compressible_modules(llama))
    assert len(names) == 14
    assert names[0] == "model.layers.0.self_attn.q_proj" and names[-1] == "model.layers.1.mlp.down_proj"
    assert not any("embed" in n or "lm_head" in n for n in names)


def test_compressible_modules_bert(bert):
    names = list(compressible_modules(bert))
    assert len(names) == 12
    assert names[0] == "encoder.layer.0.attention.self.query"
    assert "encoder.layer.1.output.dense" in names
    assert not any("pooler" in n or "embeddings" in n for n in names)


def test_compressible_modules_after_adapters_maps_to_base_layer(llama, ids):
    plan = Plan(layers={"re:.*up_proj": LayerConfig(adapter=AdapterConfig(rank=4))})
    compress_(llama, plan)
    names = compressible_modules(llama)
    assert len(names) == 14 and all(isinstance(m, torch.nn.Linear) for m in names.values())
    assert not any("lora" in n or "base_layer" in n for n in names)


@pytest.mark.parametrize(
    "layer, message",
    [
        (LayerConfig(quant=QuantConfig(bits=4, group_size=48)), "group_size: got 48 for in_features=64"),
        (LayerConfig(sparsity=SparsityConfig(structure="2:3")), "structure: got '2:3' for in_features=64"),
        (LayerConfig(adapter=AdapterConfig(rank=65)), "adapter.rank: got 65 for a 64x64 layer; allowed: 0 to 64"),
    ],
)
def test_validation_names_module_field_value_and_allowed(llama, layer, message):
    plan = Plan(layers={"model.layers.0.self_attn.q_proj": layer})
    with pytest.raises(PressoError) as err:
        compress_(llama, plan)
    text = str(err.value)
    assert "model.layers.0.self_attn.q_proj" in text and message in text and "allowed" in text
    assert "\n" not in text


def test_unknown_module_key(llama):
    with pytest.raises(PressoError, match="lm_head"):
        compress_(llama, Plan(layers={"lm_head": LayerConfig(quant=QuantConfig(bits=4))}))


def test_wanda_needs_calibration_and_recovery_needs_teacher(llama):
    wanda = Plan(layers={"re:.*": LayerConfig(sparsity=SparsityConfig(0.5))}, criterion="wanda")
    with pytest.raises(PressoError, match="calibration"):
        compress_(copy.deepcopy(llama), wanda)
    recover = Plan(layers={"re:.*": LayerConfig(adapter=AdapterConfig(2))}, recovery=RecoveryConfig(steps=2))
    with pytest.raises(PressoError, match="teacher"):
        compress_(copy.deepcopy(llama), recover)


def test_refuses_to_compress_twice(llama):
    plan = Plan(layers={"re:.*": LayerConfig(quant=QuantConfig(bits=8))})
    compress_(llama, plan)
    with pytest.raises(PressoError, match="already compressed"):
        compress_(llama, plan)


def test_model_weights_are_the_dequantized_codes(any_model):
    plan = Plan(layers={"re:.*": LayerConfig(sparsity=SparsityConfig(0.3), quant=QuantConfig(bits=3, group_size=16))})
    result = compress_(any_model, plan)
    modules = compressible_modules(any_model)
    assert set(result.modules) == set(modules)
    for name, rec in result.modules.items():
        weight = modules[name].weight
        assert torch.equal(weight, dequantize(rec.codes, rec.scales, rec.zeros, 3, 16))
        assert bool((weight[~rec.mask] == 0).all())
        assert int((~rec.mask).sum()) == round(0.3 * weight.numel())
    assert set(result.timings) == {"prune_s", "quant_s", "recovery_s", "total_s"}


def test_untouched_modules_and_identity_configs_stay_dense(llama):
    before = copy.deepcopy(llama)
    plan = Plan(layers={"model.layers.0.mlp.up_proj": LayerConfig(quant=QuantConfig(bits=4)),
                        "re:.*q_proj": LayerConfig()})
    result = compress_(llama, plan)
    assert list(result.modules) == ["model.layers.0.mlp.up_proj"]
    after = llama.state_dict()
    for key, value in before.state_dict().items():
        if "up_proj" not in key or "layers.0" not in key:
            assert torch.equal(value, after[key]), key


def test_wanda_uses_calibration(llama, ids):
    stats = collect_calibration(llama, ids)
    assert set(stats.sq_norms) == set(compressible_modules(llama)) and stats.n_tokens == ids.numel()
    plan_m = Plan(layers={"re:.*": LayerConfig(sparsity=SparsityConfig(0.5))})
    plan_w = Plan(layers={"re:.*": LayerConfig(sparsity=SparsityConfig(0.5))}, criterion="wanda")
    masks_m = compress_(copy.deepcopy(llama), plan_m).modules
    masks_w = compress_(copy.deepcopy(llama), plan_w, calibration=stats).modules
    assert any(not torch.equal(masks_m[n].mask, masks_w[n].mask) for n in masks_m)


@pytest.mark.parametrize("make", [tiny_llama, tiny_bert], ids=["llama", "bert"])
def test_recovery_reduces_distillation_loss(make, ids):
    dense = make()
    teacher = TeacherCache.build(dense, ids, top_k=32)
    assert teacher.divergence(dense) < 1e-6
    layers = {"re:.*": LayerConfig(sparsity=SparsityConfig(0.5), quant=QuantConfig(bits=2, group_size=32),
                                   adapter=AdapterConfig(rank=8))}
    plain = copy.deepcopy(dense)
    compress_(plain, Plan(layers=layers))
    recovered = copy.deepcopy(dense)
    result = compress_(recovered, Plan(layers=layers, recovery=RecoveryConfig(steps=40, lr=5e-3, batch_size=4)),
                       teacher=teacher)
    before, after = teacher.divergence(plain), teacher.divergence(recovered)
    assert len(result.recovery_losses) == 40 and result.timings["recovery_s"] > 0
    assert after < 0.7 * before, (before, after)
    # base weights stay frozen: the compressed weights are identical with and without recovery
    for name in result.modules:
        base_a = plain.get_submodule(name).base_layer.weight
        base_b = recovered.get_submodule(name).base_layer.weight
        assert torch.equal(base_a, base_b)
    lora = [p for n, p in recovered.named_parameters() if "lora_" in n]
    assert lora and all(p.dtype == torch.float32 for p in lora)


def test_adapters_without_recovery_leave_outputs_unchanged(llama, ids):
    reference = outputs(llama, ids)
    result = compress_(llama, Plan(layers={"re:.*": LayerConfig(adapter=AdapterConfig(rank=4, alpha=16))}))
    assert result.adapters["model.layers.0.mlp.up_proj"] == (4, 16.0)
    assert torch.allclose(outputs(llama, ids), reference, atol=0, rtol=0)


def test_per_module_ranks(llama):
    plan = Plan(layers={"model.layers.1.mlp.up_proj": LayerConfig(adapter=AdapterConfig(rank=2)),
                        "re:.*up_proj": LayerConfig(adapter=AdapterConfig(rank=6))})
    compress_(llama, plan)
    assert llama.get_submodule("model.layers.1.mlp.up_proj").r["default"] == 2
    assert llama.get_submodule("model.layers.0.mlp.up_proj").r["default"] == 6
    assert not hasattr(llama.get_submodule("model.layers.0.mlp.down_proj"), "r")


@pytest.mark.parametrize("device", CPU_AND_GPU)
def test_runs_on_model_device(device, ids):
    model = tiny_llama().to(device)
    ids = ids.to(device)
    stats = collect_calibration(model, ids)
    teacher = TeacherCache.build(model, ids, top_k=8)
    plan = Plan(layers={"re:.*": LayerConfig(sparsity=SparsityConfig(structure="2:4"), quant=QuantConfig(bits=4, group_size=32),
                                             adapter=AdapterConfig(rank=2))},
                criterion="wanda", recovery=RecoveryConfig(steps=2, batch_size=2))
    result = compress_(model, plan, calibration=stats, teacher=teacher)
    rec = next(iter(result.modules.values()))
    assert rec.codes.device.type == device and rec.mask.device.type == device
    assert teacher.divergence(model) >= 0
