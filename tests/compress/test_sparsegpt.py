"""SparseGPT against a float64 computation of the paper's equations, and inside compress_."""

import copy
import os

import torch

from presso.compress import collect_calibration, compress_, load_compressed, save_compressed
from presso.compress._quant import dequantize
from presso.compress._sparsegpt import sparsegpt
from presso.compress.quantizers import LayerCache
from presso.compress.quantizers._base import int_params, int_round
from presso.plan import LayerConfig, Plan, QuantConfig, SparsityConfig

from .conftest import outputs


def _data(out_f=32, in_f=96, n=1024, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=g) @ torch.randn(16, in_f, generator=g) + 0.1 * torch.randn(n, in_f, generator=g)
    return torch.randn(out_f, in_f, generator=g), x, x.t() @ x


def _reference(w, h, amount, bits, group, block, percdamp=0.01):
    """SparseGPT in float64 with no Cholesky factor or lazy batching: per block, prune the
    ``amount`` lowest ``w^2 / [H^-1]_jj`` (with ``[H^-1]_jj`` of the columns still to come, i.e.
    ``inv(H[j:, j:])[0, 0]``); per column, round the kept weights, spread the error over later
    columns through H^-1, and remove the column from H^-1 by one step of Gaussian elimination."""
    w, h = w.double().clone(), h.double().clone()
    n = w.shape[1]
    h += percdamp * torch.diag(h).mean() * torch.eye(n, dtype=torch.float64)
    hinv = torch.linalg.inv(h)
    keep = torch.ones_like(w, dtype=torch.bool)
    codes = torch.zeros_like(w)
    for b0 in range(0, n, block):
        b1 = min(b0 + block, n)
        d = torch.tensor([torch.linalg.inv(h[j:, j:])[0, 0] for j in range(b0, b1)], dtype=torch.float64)
        sal = w[:, b0:b1].pow(2) / d
        k = round(sal.numel() * amount)
        prune = torch.zeros_like(sal, dtype=torch.bool)
        prune.view(-1)[torch.topk(sal.flatten(), k, largest=False).indices] = True
        keep[:, b0:b1] = ~prune
        for i in range(b0, b1):
            if bits:
                if i % group == 0:
                    s, z = int_params((w[:, i:i + group] * keep[:, i:i + group]).float().unsqueeze(1), bits, False)
                    s, z = s[:, 0], z[:, 0]
                q = torch.where(keep[:, i], int_round(w[:, i:i + 1].float(), s, z, bits, False)[:, 0], z)
                codes[:, i] = q.double()
                deq = (q.double() - z.double()) * s.double()
            else:
                deq = w[:, i] * keep[:, i]
                codes[:, i] = deq
            err = (w[:, i] - deq) / hinv[i, i]
            w[:, i:] -= torch.outer(err, hinv[i, i:])
            hinv -= torch.outer(hinv[:, i], hinv[i, :]) / hinv[i, i]
    return keep, codes


def _out_err(x, w, d):
    return float((x @ (w - d).t()).pow(2).sum() / (x @ w.t()).pow(2).sum())


def test_sparsegpt_with_quantization_matches_the_float64_reference():
    w, x, h = _data()
    out = sparsegpt(w, h, 0.5, None, QuantConfig(bits=4, group_size=32), block=32, search=False)
    keep, codes = _reference(w, h, 0.5, 4, 32, 32)
    assert (out.keep == keep).float().mean() > 0.98
    assert (out.codes.double() == codes).float().mean() > 0.97  # float32 vs float64 ties, then propagation
    assert abs(float(out.keep.float().mean()) - 0.5) < 1e-3
    d = dequantize(out.codes, out.scales, out.zeros, 4, 32)
    assert torch.equal(d[~out.keep], torch.zeros(int((~out.keep).sum())))
    assert torch.equal(d, out.weight)
    ref_d = dequantize(codes.to(torch.uint8), out.scales, out.zeros, 4, 32) * keep
    assert _out_err(x, w, d) <= 1.03 * _out_err(x, w, ref_d)


def test_sparsegpt_pruning_only_matches_the_reference_and_beats_wanda():
    w, x, h = _data(seed=1)
    out = sparsegpt(w, h, 0.6, block=32)
    keep, ref_w = _reference(w, h, 0.6, 0, 0, 32)
    assert (out.keep == keep).float().mean() > 0.99
    assert torch.allclose(out.weight.double(), ref_w, atol=1e-3, rtol=1e-3)
    # Wanda at the same sparsity (|w| * ||x_j||, per output row) leaves a larger output error.
    score = w.abs() * x.pow(2).sum(0).sqrt()
    thr = score.kthvalue(round(0.6 * w.shape[1]), dim=1, keepdim=True).values
    assert _out_err(x, w, out.weight) < 0.7 * _out_err(x, w, w * (score > thr))


def test_sparsegpt_n_m_keeps_n_of_every_m():
    w, _, h = _data(seed=2)
    out = sparsegpt(w, h, 0.0, (2, 4), QuantConfig(bits=3, group_size=32))
    assert torch.equal(out.keep.reshape(32, -1, 4).sum(-1), torch.full((32, 24), 2))


def test_compress_with_sparsegpt_prunes_and_quantizes_in_one_sweep(llama, ids, tmp_path):
    stats = collect_calibration(llama, ids, hessians=True)
    layer = LayerConfig(sparsity=SparsityConfig(amount=0.5), quant=QuantConfig(bits=4, group_size=16, method="gptq"))
    plan = Plan(layers={"re:.*": layer}, criterion="sparsegpt")
    assert plan.needs_hessians
    cache = LayerCache()
    model = copy.deepcopy(llama)
    result = compress_(model, plan, calibration=stats, cache=cache)
    rec = result.modules["model.layers.0.mlp.down_proj"]
    assert abs(rec.sparsity - 0.5) < 0.01
    w = dict(model.named_modules())["model.layers.0.mlp.down_proj"].weight
    assert torch.equal(w[~rec.mask], torch.zeros(int((~rec.mask).sum())))
    again = copy.deepcopy(llama)
    compress_(again, plan, calibration=stats, cache=cache)
    assert cache.hits == len(result.modules)
    assert torch.equal(outputs(model, ids), outputs(again, ids))
    save_compressed(model, result, None, tmp_path / "m")
    assert os.path.getsize(tmp_path / "m" / "model.safetensors") == result.size.file_bytes
    loaded, _, _ = load_compressed(tmp_path / "m")
    assert torch.equal(outputs(loaded, ids), outputs(model, ids))
    # Pruning only (bits 16): SparseGPT's updated weights track the dense model better than Wanda's mask.
    dense_out = outputs(llama, ids)
    errs = {}
    for criterion in ("wanda", "sparsegpt"):
        m = copy.deepcopy(llama)
        compress_(m, Plan(layers={"re:.*": LayerConfig(sparsity=SparsityConfig(amount=0.5))}, criterion=criterion),
                  calibration=stats)
        errs[criterion] = float((outputs(m, ids) - dense_out).pow(2).mean())
    assert errs["sparsegpt"] < errs["wanda"], errs
