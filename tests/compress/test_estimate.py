"""Estimates without compressing equal what compress_ does: stored bytes exactly, weight errors to
rounding (the warm start allocates on them), for Presso's codes and ggml's formats."""

import copy

import pytest
import torch

from presso.compress import (CalibrationStats, collect_calibration, compress_, dense_nbytes, fixed_nbytes,
                             format_errors, stored_weight_bytes, target_modules, weighted_errors)
from presso.compress._formats import dequantize_rows, quantize_rows
from presso.compress.quantizers import LayerCache
from presso.plan import LayerConfig, Plan, PruneCriterion, QuantConfig, SparsityConfig

MODULES = ("model.layers.0.mlp.up_proj", "model.layers.1.mlp.down_proj")  # [128, 64] and [64, 128]
CONFIGS = [
    LayerConfig(),
    LayerConfig(sparsity=SparsityConfig(0.5)),
    LayerConfig(sparsity=SparsityConfig(0.1)),  # sparse encoding larger than dense: stored dense
    LayerConfig(sparsity=SparsityConfig(structure="2:4")),
    LayerConfig(quant=QuantConfig(bits=4, group_size=32)),
    LayerConfig(quant=QuantConfig(bits=8, group_size=0, symmetric=True)),
    LayerConfig(quant=QuantConfig(bits=3, group_size=32, method="rtn_fmin")),
    LayerConfig(sparsity=SparsityConfig(0.5), quant=QuantConfig(bits=4, group_size=32)),
    LayerConfig(sparsity=SparsityConfig(0.25), quant=QuantConfig(bits=2, group_size=64, method="rtn_fmin")),
    LayerConfig(sparsity=SparsityConfig(structure="2:4"), quant=QuantConfig(bits=8, group_size=32)),
]


@pytest.mark.parametrize("criterion", [PruneCriterion.MAGNITUDE, PruneCriterion.WANDA])
def test_stored_weight_bytes_equal_the_compressed_size(llama, ids, criterion):
    stats = collect_calibration(llama, ids) if criterion is PruneCriterion.WANDA else None
    modules = target_modules(llama)
    for config in CONFIGS:
        plan = Plan(layers={m: config for m in MODULES}, criterion=criterion)
        result = compress_(copy.deepcopy(llama), plan, calibration=stats)
        for name in MODULES:
            weight = modules[name].weight
            predicted = stored_weight_bytes(config, tuple(weight.shape), weight.dtype, criterion)
            reported = result.size.modules.get(name)
            actual = reported.total_bytes - reported.bias_bytes if reported else weight.numel() * weight.element_size()
            assert predicted == actual, (config, name)


def test_weighted_errors_are_those_of_the_compressed_weights(llama, ids):
    stats = collect_calibration(llama, ids)
    dense = target_modules(llama)
    sparsities = [SparsityConfig(0.0), SparsityConfig(0.5), SparsityConfig(structure="2:4")]
    quants = [QuantConfig(bits=16), QuantConfig(bits=8, group_size=32), QuantConfig(bits=2, group_size=32),
              QuantConfig(bits=4, group_size=48)]  # 48 divides neither module's inputs: no error counted
    errors = weighted_errors({m: dense[m] for m in MODULES}, stats, sparsities, quants, PruneCriterion.WANDA)

    def measured(config):
        model = copy.deepcopy(llama)
        compress_(model, Plan(layers={m: config for m in MODULES}, criterion="wanda"), calibration=stats)
        after = target_modules(model)
        return sum(float((after[m].weight - dense[m].weight).detach().pow(2).mul(stats.sq_norms[m]).sum()) for m in MODULES)

    assert errors.dense == pytest.approx(sum(float(dense[m].weight.detach().pow(2).mul(stats.sq_norms[m]).sum())
                                             for m in MODULES))
    assert errors.prune[0] == 0.0 and errors.quant[0] == 0.0 and errors.quant[3] == 0.0
    for sp, err in zip(sparsities[1:], errors.prune[1:]):
        assert err == pytest.approx(measured(LayerConfig(sparsity=sp)), rel=1e-5)
    for q, err in zip(quants[1:3], errors.quant[1:3]):
        assert err == pytest.approx(measured(LayerConfig(quant=q)), rel=1e-5)
    assert 0 < errors.quant[1] < errors.quant[2] < errors.dense


def test_quant_errors_are_output_errors_where_hessians_were_collected(llama, ids):
    """With input Hessians, quantization errors are the output errors of what compress_ leaves,
    so GPTQ's gain over RTN shows; GPTQ layers measured through a cache are the ones compress_
    then reuses."""
    stats = collect_calibration(llama, ids, hessians=True)
    dense = target_modules(llama)
    quants = [QuantConfig(bits=4, group_size=32), QuantConfig(bits=4, group_size=32, method="gptq")]
    cache = LayerCache()
    errors = weighted_errors({m: dense[m] for m in MODULES}, stats, [SparsityConfig(0.0)], quants,
                             PruneCriterion.WANDA, cache)

    def output_error(weights):
        return sum(float(((weights[m] @ stats.hessians[m]) * weights[m]).sum()) for m in MODULES)

    assert errors.dense == pytest.approx(output_error({m: dense[m].weight.detach() for m in MODULES}), rel=1e-5)
    assert len(cache) == len(MODULES)  # the GPTQ layers (RTN's cost less than a lookup)
    for q, err in zip(quants, errors.quant):
        model = copy.deepcopy(llama)
        compress_(model, Plan(layers={m: LayerConfig(quant=q) for m in MODULES}, criterion="wanda"),
                  calibration=stats, cache=cache)
        after = target_modules(model)
        assert err == pytest.approx(output_error({m: after[m].weight.detach() - dense[m].weight.detach()
                                                  for m in MODULES}), rel=1e-4), q
    assert cache.hits == len(MODULES)
    assert 0 < errors.quant[1] < errors.quant[0] < errors.dense


def test_fixed_bytes_are_the_dense_bytes_less_the_chosen_weights(llama):
    modules = {m: target_modules(llama)[m] for m in MODULES}
    weights = sum(m.weight.numel() * m.weight.element_size() for m in modules.values())
    assert fixed_nbytes(llama, modules) == dense_nbytes(llama) - weights
    assert fixed_nbytes(llama, {}) == dense_nbytes(llama)


FORMAT_QUANTS = [QuantConfig(format="Q8_0"), QuantConfig(format="Q5_0"), QuantConfig(format="IQ4_NL"),
                 QuantConfig(format="IQ4_NL", method="gptq")]


def test_format_bytes_are_ggml_rows():
    # ggml rows of blocks, pruned or not: Q8_0 stores 34 bytes per 32 values, IQ4_NL 18
    assert stored_weight_bytes(LayerConfig(quant=QuantConfig(format="Q8_0")), (128, 64), torch.float32,
                               PruneCriterion.WANDA) == 128 * 2 * 34
    pruned = LayerConfig(sparsity=SparsityConfig(0.5), quant=QuantConfig(format="IQ4_NL"))
    assert stored_weight_bytes(pruned, (128, 64), torch.float32, PruneCriterion.WANDA) == 128 * 2 * 18


def test_format_errors_are_the_output_errors_of_the_compressed_weights(llama, ids):
    """Every row sampled (128 rows <= SAMPLED_ROWS): the estimate is what compress_ leaves,
    measured through the layer's input Hessian, to rounding; GPTQ lowers that error."""
    stats = collect_calibration(llama, ids, hessians=True)
    dense = target_modules(llama)
    name = "model.layers.0.mlp.up_proj"
    reference, errors = format_errors(name, dense[name].weight, stats, FORMAT_QUANTS)
    hessian = stats.hessians[name]
    w = dense[name].weight.detach()
    assert reference == pytest.approx(float(((w @ hessian) * w).sum()), rel=1e-5)
    for q, err in zip(FORMAT_QUANTS, errors):
        model = copy.deepcopy(llama)
        compress_(model, Plan(layers={name: LayerConfig(quant=q)}), calibration=stats)
        delta = target_modules(model)[name].weight.detach() - w
        assert err == pytest.approx(float(((delta @ hessian) * delta).sum()), rel=1e-4), q
    assert 0 < errors[0] < errors[1] < errors[2] < reference
    assert errors[3] < errors[2]  # GPTQ's rounding inside IQ4_NL's blocks


def test_format_errors_on_sampled_rows_estimate_the_whole_weight():
    torch.manual_seed(0)
    weight = torch.randn(2048, 64)
    x = torch.randn(512, 64) * torch.linspace(0.2, 3.0, 64)
    stats = CalibrationStats(sq_norms={"w": x.pow(2).sum(0)}, n_tokens=512, hessians={"w": x.T @ x})
    _, sampled = format_errors("w", weight, stats, FORMAT_QUANTS[:3])
    delta = [dequantize_rows(quantize_rows(weight, q.format, stats.sq_norms["w"] / 512), q.format) - weight
             for q in FORMAT_QUANTS[:3]]
    full = [float(((d @ stats.hessians["w"]) * d).sum()) for d in delta]
    assert sampled == pytest.approx(full, rel=0.1)  # 256 of 2,048 rows
