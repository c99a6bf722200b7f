import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from presso.compress._prune import prune_mask


def _weight(seed=0, shape=(32, 64)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@settings(max_examples=40, deadline=None)
@given(amount=st.floats(0.0, 0.99), seed=st.integers(0, 1000), quantized=st.booleans())
def test_magnitude_prunes_exact_count_even_with_ties(amount, seed, quantized):
    w = _weight(seed)
    if quantized:  # a coarse grid makes many |W| equal (like SmolLM2's Q4_1 weights)
        w = torch.round(w * 2) / 2
    mask = prune_mask(w, amount, None)
    assert int((~mask).sum()) == round(amount * w.numel())
    if 0 < int((~mask).sum()) < w.numel():
        assert w[~mask].abs().max() <= w[mask].abs().min()


@pytest.mark.parametrize("amount", [0.25, 0.5, 0.7])
def test_wanda_prunes_exact_count_per_row_and_uses_activations(amount):
    w = _weight(1)
    norms = torch.rand(64, generator=torch.Generator().manual_seed(2)) * 10
    mask = prune_mask(w, amount, None, norms)
    assert ((~mask).sum(dim=1) == round(amount * 64)).all()
    scores = w.abs() * norms.sqrt()
    for row in range(w.shape[0]):
        assert scores[row][~mask[row]].max() <= scores[row][mask[row]].min()
    # activations matter: a huge norm on input 0 keeps column 0 everywhere
    norms[0] = 1e12
    assert prune_mask(w, amount, None, norms)[:, 0].all()


def test_wanda_rows_with_ties():
    w = torch.round(_weight(4) * 2) / 2
    mask = prune_mask(w, 0.5, None, torch.ones(64))
    assert ((~mask).sum(dim=1) == 32).all()


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8)])
@pytest.mark.parametrize("wanda", [False, True])
def test_n_m_pattern_holds(n, m, wanda):
    w = _weight(5)
    norms = torch.rand(64) if wanda else None
    mask = prune_mask(w, (m - n) / m, (n, m), norms)
    per_group = mask.view(32, 64 // m, m).sum(dim=-1)
    assert (per_group == n).all()
    scores = (w.abs() * (norms.sqrt() if wanda else 1)).view(32, -1, m)
    kept = mask.view(32, -1, m)
    assert (scores.masked_fill(~kept, float("inf")).amin(-1) >= scores.masked_fill(kept, -1).amax(-1)).all()


def test_zero_amount_keeps_everything():
    assert prune_mask(_weight(), 0.0, None).all()
