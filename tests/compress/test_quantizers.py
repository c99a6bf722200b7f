"""Conformance of every registered quantizer, plus GPTQ against a reference computation."""

import copy
import os

import pytest
import torch

from presso.compress import collect_calibration, compress_, load_compressed, save_compressed
from presso.compress._quant import dequantize, quantize
from presso.compress.quantizers import LayerStats, get_quantizer, registered_quantizers
from presso.compress.quantizers.gptq import gptq_quantize
from presso.errors import PressoError
from presso.plan import LayerConfig, Plan, QuantConfig, SparsityConfig, quant_methods

from .conftest import outputs, tiny_bert, tiny_llama

METHODS = sorted(registered_quantizers())


def test_registry_matches_the_plan_table():
    assert set(METHODS) == set(quant_methods())
    for name, handler in registered_quantizers().items():
        assert handler.needs == quant_methods()[name]


_PLUGIN_QUANTIZER = """
import torch
from presso.errors import PressoError
from presso.plan import QuantConfig
try:
    QuantConfig(bits=4, method="rtn_copy")
except PressoError as exc:
    assert "allowed: ['gptq', 'imatrix', 'rtn', 'rtn_fmin']" in str(exc), exc
else:
    raise AssertionError("an undeclared method was accepted")
from presso.compress.quantizers import get_quantizer, register_quantizer
from presso.compress.quantizers.rtn import RTN

@register_quantizer
class RTNCopy(RTN):
    name = "rtn_copy"

config = QuantConfig(bits=4, group_size=32, method="rtn_copy")
assert config.needs == "none"
w = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
ours = get_quantizer("rtn_copy").quantize(w, config).dequantize()
rtn = get_quantizer("rtn").quantize(w, QuantConfig(bits=4, group_size=32)).dequantize()
assert torch.equal(ours, rtn)
print("ok")
"""


def test_a_registered_quantizer_is_accepted_by_plans():
    # In a subprocess: the registries are process-wide and the conformance table above is built at import.
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _PLUGIN_QUANTIZER], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def _stats(in_f=128, n=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=g) @ torch.randn(16, in_f, generator=g) + 0.1 * torch.randn(n, in_f, generator=g)
    return x, LayerStats(sq_norms=x.pow(2).sum(0), hessian=x.t() @ x, n_tokens=n)


@pytest.mark.parametrize("method", METHODS)
class TestQuantizerConformance:
    """Every registered method must pass these (add a method: it runs here automatically)."""

    @pytest.mark.parametrize("bits,group,sym", [(8, 0, False), (4, 32, False), (3, 16, True), (2, 64, False)])
    def test_layout_shapes_bytes_and_grid(self, method, bits, group, sym):
        # rtn_fmin is asymmetric by construction (QuantConfig refuses it symmetric): its 3-bit case runs asymmetric.
        sym = sym and method != "rtn_fmin"
        torch.manual_seed(0)
        w = torch.randn(24, 128)
        _, stats = _stats()
        layout = get_quantizer(method).quantize(w, QuantConfig(bits=bits, group_size=group, symmetric=sym, method=method), stats)
        groups = 1 if group == 0 else 128 // group
        assert layout.codes.dtype == torch.uint8 and layout.codes.shape == w.shape
        assert int(layout.codes.max()) < 2**bits
        assert layout.scales.dtype == torch.float16 and layout.scales.shape == (24, groups)
        sizes = layout.nbytes()
        assert sizes["codes"] == (24 * 128 * bits + 7) // 8
        assert sizes["scales"] == 2 * 24 * groups
        if layout.mins is not None:
            assert sizes["zeros"] == 2 * 24 * groups
        elif sym:
            assert "zeros" not in sizes and layout.zeros is None
        else:
            assert sizes["zeros"] == (24 * groups * bits + 7) // 8
        deq = layout.dequantize()
        err = (deq - w).pow(2).mean() / w.pow(2).mean()
        assert err < {8: 1e-3, 4: 0.05, 3: 0.2, 2: 0.5}[bits], float(err)

    def test_no_nan_on_zero_and_constant_groups(self, method):
        w = torch.randn(8, 64)
        w[0] = 0.0                # an all-zero row
        w[1, :32] = 0.37          # a constant group
        w[2, 32:] = -1e-30        # a group of tiny values
        _, stats = _stats(64)
        stats.hessian[:, 5] = 0.0  # an input that is never active
        stats.hessian[5, :] = 0.0
        stats.sq_norms[5] = 0.0
        layout = get_quantizer(method).quantize(w, QuantConfig(bits=4, group_size=32, method=method), stats)
        deq = layout.dequantize()
        assert torch.isfinite(deq).all() and torch.isfinite(layout.scales.float()).all()
        assert torch.equal(deq[0], torch.zeros(64))
        if method != "gptq":  # GPTQ moves a constant group's error to other columns on purpose
            assert torch.allclose(deq[1, :32], torch.full((32,), 0.37), atol=1e-3)

    @pytest.mark.parametrize("make", [tiny_llama, tiny_bert], ids=["llama", "bert"])
    @pytest.mark.parametrize("sparsity", [0.0, 0.5])
    def test_compress_save_load_exact(self, method, make, sparsity, ids, tmp_path):
        dense = make()
        stats = collect_calibration(dense, ids, hessians=True)
        layer = LayerConfig(sparsity=SparsityConfig(sparsity), quant=QuantConfig(bits=4, group_size=16, method=method))
        plan = Plan(layers={"re:.*": layer}, criterion="wanda")
        model = copy.deepcopy(dense)
        result = compress_(model, plan, calibration=stats)
        params = dict(model.named_parameters())
        for name, rec in result.modules.items():
            assert rec.method == method
            restored = get_quantizer(method).dequantize(_layout(rec), torch.float32, rec.mask)
            assert torch.equal(restored, params[f"{name}.weight"].detach()), name  # dequantize == model weights
            if rec.mask is not None:
                assert torch.equal(restored[~rec.mask], torch.zeros(int((~rec.mask).sum())))
        report = save_compressed(model, result, None, tmp_path / "out")
        assert os.path.getsize(tmp_path / "out" / "model.safetensors") == result.size.file_bytes
        assert report.predicted_bytes == result.size.total_bytes
        loaded, _, plan_back = load_compressed(tmp_path / "out")
        assert plan_back == plan
        assert torch.equal(outputs(loaded, ids), outputs(model, ids))


def _layout(rec):
    from presso.compress.quantizers import QuantLayout

    return QuantLayout(rec.codes, rec.scales, rec.zeros, rec.mins, rec.bits, rec.group_size, rec.symmetric)


@pytest.mark.parametrize("bits,group,sym", [(8, 0, False), (4, 32, False), (4, 64, True), (3, 16, False)])
def test_rtn_handler_is_todays_quantizer_to_the_bit(bits, group, sym):
    torch.manual_seed(3)
    w = torch.randn(32, 128)
    layout = get_quantizer("rtn").quantize(w, QuantConfig(bits=bits, group_size=group, symmetric=sym))
    codes, scales, zeros = quantize(w, bits, group, sym)
    assert torch.equal(layout.codes, codes) and torch.equal(layout.scales, scales)
    assert (zeros is None and layout.zeros is None) or torch.equal(layout.zeros, zeros)
    assert torch.equal(layout.dequantize(), dequantize(codes, scales, zeros, bits, group))


def _reference_gptq(w, h, bits, group, percdamp=0.01):
    """GPTQ as the paper's Eq. (2)-(3) state it, in float64, with no Cholesky or lazy batching:
    quantize column i, spread its error over the later columns through H^-1, then remove
    column i from H^-1 by one step of Gaussian elimination."""
    from presso.compress.quantizers._base import int_params, int_round

    w = w.double().clone()
    h = h.double().clone()
    n = w.shape[1]
    h += percdamp * torch.diag(h).mean() * torch.eye(n, dtype=torch.float64)
    hinv = torch.linalg.inv(h)
    codes = torch.empty_like(w)
    for i in range(n):
        if i % group == 0:
            s, z = int_params(w[:, i:i + group].float().unsqueeze(1), bits, False)
            s, z = s[:, 0], z[:, 0]
        q = int_round(w[:, i:i + 1].float(), s, z, bits, False)[:, 0]
        codes[:, i] = q.double()
        deq = (q.double() - z.double()) * s.double()
        err = (w[:, i] - deq) / hinv[i, i]
        w[:, i:] -= err.unsqueeze(1) * hinv[i, i:].unsqueeze(0)
        hinv -= torch.outer(hinv[:, i], hinv[i, :]) / hinv[i, i]
    return codes.to(torch.uint8)


def test_gptq_matches_the_reference_computation():
    torch.manual_seed(0)
    w = torch.randn(32, 96)
    x, stats = _stats(96, n=1024)
    codes, scales, zeros = gptq_quantize(w, stats.hessian, 4, 32, False, block=32, search=False)
    ref = _reference_gptq(w, stats.hessian, 4, 32)
    agree = (codes == ref).float().mean()
    assert agree > 0.98, float(agree)  # float32 vs float64 can flip a rare tie, which then propagates

    def out_err(c, s, z):
        d = dequantize(c, s, z, 4, 32)
        return float((x @ (w - d).t()).pow(2).sum() / (x @ w.t()).pow(2).sum())

    # Same grid (scales from the same updated weights) and the same output error within 2%.
    assert out_err(codes, scales, zeros) <= 1.02 * out_err(ref, scales, zeros) + 1e-9


def test_gptq_with_activation_order_and_mask_keeps_pruned_zeros():
    torch.manual_seed(1)
    w = torch.randn(16, 64)
    mask = torch.rand(16, 64) > 0.5
    w = w * mask
    _, stats = _stats(64)
    codes, scales, zeros = gptq_quantize(w, stats.hessian, 3, 32, False, mask=mask, act_order=True)
    deq = dequantize(codes, scales, zeros, 3, 32)
    assert torch.equal(deq[~mask], torch.zeros(int((~mask).sum())))


def test_plan_rejects_unknown_method_and_symmetric_float_minimum():
    with pytest.raises(PressoError, match=r"quant.method: got 'awq'; allowed: \['gptq', 'imatrix', 'rtn', 'rtn_fmin'\]"):
        QuantConfig(bits=4, method="awq")
    with pytest.raises(PressoError, match="quant.symmetric: got true with method 'rtn_fmin'"):
        QuantConfig(bits=4, symmetric=True, method="rtn_fmin")
    plan = Plan(layers={"re:.*": LayerConfig(quant=QuantConfig(bits=4, method="gptq"))})
    assert plan.needs_calibration and plan.needs_hessians
    assert not Plan(layers={"re:.*": LayerConfig(quant=QuantConfig(bits=4))}).needs_calibration


def test_compress_names_missing_statistics(llama, ids):
    plan = Plan(layers={"re:.*": LayerConfig(quant=QuantConfig(bits=4, method="gptq"))})
    with pytest.raises(PressoError, match=r"quant.method: 'gptq' needs calibration statistics.*hessians=True"):
        compress_(copy.deepcopy(llama), plan)
    with pytest.raises(PressoError, match="needs input Hessians"):
        compress_(copy.deepcopy(llama), plan, calibration=collect_calibration(llama, ids))


def test_hessians_are_shared_by_modules_reading_one_input(llama, ids):
    stats = collect_calibration(llama, ids, hessians=True)
    h = stats.hessians
    assert h["model.layers.0.self_attn.q_proj"] is h["model.layers.0.self_attn.v_proj"]
    assert h["model.layers.0.mlp.gate_proj"] is h["model.layers.0.mlp.up_proj"]
    assert h["model.layers.0.mlp.down_proj"] is not h["model.layers.0.mlp.up_proj"]
    # X^T X's diagonal is the Wanda statistic.
    name = "model.layers.1.mlp.down_proj"
    assert torch.allclose(torch.diag(h[name]), stats.sq_norms[name], rtol=1e-4)


@pytest.mark.slow
def test_gptq_beats_rtn_on_a_real_smollm2_layer():
    from presso import data, models
    loaded = models.load_model("builtin:smollm2-135m")
    docs, _ = data.split_documents(data.load_documents("builtin:lee"))
    ids = data.token_batches(loaded.tokenizer, docs, 8, 128)
    names = ["model.layers.10.self_attn.q_proj", "model.layers.10.mlp.down_proj"]
    stats = collect_calibration(loaded.model, ids, module_names=names, hessians=True)
    modules = dict(loaded.model.named_modules())
    for name in names:
        w = modules[name].weight.detach()
        h = stats.hessians[name]
        errs = {}
        for method in ("rtn", "gptq"):
            d = get_quantizer(method).quantize(w, QuantConfig(bits=3, group_size=32, method=method),
                                               stats.layer_stats(name)).dequantize()
            diff = w - d
            errs[method] = float(torch.einsum("oi,ij,oj->", diff, h, diff) / torch.einsum("oi,ij,oj->", w, h, w))
        assert errs["gptq"] < 0.6 * errs["rtn"], (name, errs)


def test_layer_cache_reuses_layers_and_misses_on_another_model(llama, ids):
    from presso.compress.quantizers import LayerCache

    stats = collect_calibration(llama, ids, hessians=True)
    plan = Plan(layers={"re:.*": LayerConfig(quant=QuantConfig(bits=3, group_size=16, method="gptq"))})
    cache = LayerCache()
    first = copy.deepcopy(llama)
    compress_(first, plan, calibration=stats, cache=cache)
    n = len(cache)
    assert n == cache.misses and cache.hits == 0
    second = copy.deepcopy(llama)
    compress_(second, plan, calibration=stats, cache=cache)
    assert cache.hits == n and cache.hit_rate == 0.5
    assert torch.equal(outputs(first, ids), outputs(second, ids))
    other = tiny_llama(seed=5)
    compress_(other, plan, calibration=stats, cache=cache)  # same names, other weights: no reuse
    assert cache.hits == n
    small = LayerCache(max_bytes=2000)
    compress_(copy.deepcopy(llama), plan, calibration=stats, cache=small)
    assert small._bytes <= 2000


def test_gptq_factors_hessian_once_per_layer_input(llama, ids):
    from presso.compress.quantizers.gptq import FACTORS

    stats = collect_calibration(llama, ids, hessians=True)
    inputs = len({id(h) for h in stats.hessians.values()})  # q/k/v share one, gate/up one
    assert inputs < len(stats.hessians)
    misses, hits = FACTORS.misses, FACTORS.hits
    plan = lambda bits: Plan(layers={"re:.*": LayerConfig(quant=QuantConfig(bits=bits, group_size=16, method="gptq"))})  # noqa: E731
    first = copy.deepcopy(llama)
    compress_(first, plan(3), calibration=stats)
    assert FACTORS.misses - misses == inputs and FACTORS.hits - hits == len(stats.hessians) - inputs
    compress_(copy.deepcopy(llama), plan(4), calibration=stats)  # another choice: every factor reused
    assert FACTORS.misses - misses == inputs
    # A reused factor gives the codes a fresh factorisation gives.
    name = "model.layers.1.self_attn.v_proj"
    w = dict(llama.named_modules())[name].weight.detach()
    cached = gptq_quantize(w, stats.hessians[name], 3, 16, False, act_order=True)
    fresh = gptq_quantize(w, stats.hessians[name].clone(), 3, 16, False, act_order=True)
    assert all(torch.equal(a, b) for a, b in zip(cached, fresh))
