"""The cached per-row Wanda order gives exactly the masks of ``prune_mask``."""

import copy

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from presso.compress import collect_calibration, compress_
from presso.compress._prune import mask_from_ranks, prune_mask, wanda_row_ranks
from presso.plan import LayerConfig, Plan, QuantConfig, SparsityConfig


@settings(max_examples=40, deadline=None)
@given(amount=st.floats(0.0, 0.99), seed=st.integers(0, 1000), coarse=st.booleans())
def test_rank_masks_equal_prune_mask_even_with_ties(amount, seed, coarse):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(16, 48, generator=gen)
    norms = torch.rand(48, generator=gen) * 5
    if coarse:  # many equal scores: ties at the threshold are pruned in position order
        w = torch.round(w * 2) / 2
        norms = torch.ones(48)
    expected = prune_mask(w, amount, None, norms)
    mask, kept = mask_from_ranks(wanda_row_ranks(w, norms), amount)
    assert torch.equal(mask, expected)
    assert kept == int(expected.sum())


def test_compress_with_cached_ranks_matches_without():
    from presso.models import load_model

    loaded = load_model("tiny:llama")
    ids = torch.randint(0, 1000, (4, 16), generator=torch.Generator().manual_seed(0))
    plan = Plan(layers={"re:.*mlp.*": LayerConfig(sparsity=SparsityConfig(0.4), quant=QuantConfig(4, 32)),
                        "re:.*self_attn.*": LayerConfig(sparsity=SparsityConfig(0.2))}, criterion="wanda")
    plain = collect_calibration(loaded.model, ids)
    cached = collect_calibration(loaded.model, ids)
    cached.cache_ranks = True
    a, b, c = (copy.deepcopy(loaded.model) for _ in range(3))
    ra = compress_(a, plan, calibration=plain)
    rb = compress_(b, plan, calibration=cached)
    rc = compress_(c, plan, calibration=cached)  # second use: from the cache
    for name in ra.modules:
        assert torch.equal(ra.modules[name].mask, rb.modules[name].mask)
        assert torch.equal(ra.modules[name].mask, rc.modules[name].mask)
        assert ra.modules[name].n_kept == rb.modules[name].n_kept
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))
    # a different weight under the same name is noticed and ranked afresh
    other = copy.deepcopy(loaded.model)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(-1.5).add_(0.01)
    ro = compress_(copy.deepcopy(other), plan, calibration=cached)
    rp = compress_(copy.deepcopy(other), plan, calibration=plain)
    assert all(torch.equal(ro.modules[n].mask, rp.modules[n].mask) for n in ro.modules)
