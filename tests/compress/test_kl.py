"""The one top-k + tail KL (presso.compress.topk_kl) against a direct full-vocabulary computation."""

import math

import torch

from presso.compress import KL_TAIL_LOG_FLOOR, gather_with_tail, topk_kl, topk_with_tail


def _full_kl(logits_p, logits_q):
    logp, logq = logits_p.double().log_softmax(-1), logits_q.double().log_softmax(-1)
    return (logp.exp() * (logp - logq)).sum(-1)


def _kl(logits_p, logits_q, k):
    p_top, ids, p_tail = topk_with_tail(logits_p.double(), k)
    return topk_kl(p_top, p_tail, *gather_with_tail(logits_q.double(), ids))


def test_top_k_equal_to_the_vocabulary_is_the_full_kl():
    g = torch.Generator().manual_seed(0)
    p, q = 3 * torch.randn(2, 5, 64, generator=g), 3 * torch.randn(2, 5, 64, generator=g)
    torch.testing.assert_close(_kl(p, q, 64), _full_kl(p, q), rtol=1e-10, atol=1e-12)
    _, _, tail = topk_with_tail(p, 64)
    assert torch.isneginf(tail).all()  # no tail bucket left


def test_smaller_k_is_a_lower_bound_and_zero_for_a_model_against_itself():
    g = torch.Generator().manual_seed(1)
    p, q = torch.randn(4, 7, 50, generator=g), torch.randn(4, 7, 50, generator=g)
    full = _full_kl(p, q)
    previous = torch.zeros_like(full)
    for k in (1, 5, 20, 49):
        kl = _kl(p, q, k)
        assert bool((kl <= full + 1e-12).all()) and bool((kl >= previous - 1e-12).all())  # grows with k
        previous = kl
        assert torch.equal(_kl(p, p, k), torch.zeros_like(full))


def test_tail_formula_on_a_small_case():
    # P = (0.5, 0.3, 0.2), Q = (0.25, 0.25, 0.5), k = 1: outcomes {token 0, tail}
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64).log()
    q = torch.tensor([0.25, 0.25, 0.5], dtype=torch.float64).log()
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    p_top, ids, p_tail = topk_with_tail(p, 1)
    assert ids.tolist() == [0] and math.isclose(float(p_tail.exp()), 0.5)
    q_top, q_tail = gather_with_tail(q, ids)
    assert math.isclose(float(q_tail.exp()), 0.75)
    assert math.isclose(float(topk_kl(p_top, p_tail, q_top, q_tail)), expected, rel_tol=1e-12)
    # k = 2: outcomes {0, 1, tail}
    p_top, ids, p_tail = topk_with_tail(p, 2)
    expected = 0.5 * math.log(2) + 0.3 * math.log(0.3 / 0.25) + 0.2 * math.log(0.2 / 0.5)
    assert math.isclose(float(topk_kl(p_top, p_tail, *gather_with_tail(q, ids))), expected, rel_tol=1e-12)


def test_an_empty_q_tail_is_floored_not_infinite():
    p = torch.tensor([0.6, 0.4], dtype=torch.float64).log()
    q = torch.tensor([0.0, -200.0], dtype=torch.float64)  # Q has (almost) no mass on token 1
    p_top, ids, p_tail = topk_with_tail(p, 1)
    q_top, q_tail = gather_with_tail(q, ids)
    assert float(q_tail) < KL_TAIL_LOG_FLOOR
    kl = float(topk_kl(p_top, p_tail, q_top, q_tail))
    assert math.isclose(kl, 0.6 * math.log(0.6 / float(q_top.exp())) + 0.4 * (math.log(0.4) - KL_TAIL_LOG_FLOOR))


def test_the_loss_is_differentiable_in_q():
    g = torch.Generator().manual_seed(2)
    p = torch.randn(3, 20, generator=g)
    q = torch.randn(3, 20, generator=g, requires_grad=True)
    for k in (4, 20):  # with a tail bucket, and with none (p_tail = -inf)
        p_top, ids, p_tail = topk_with_tail(p, k)
        loss = topk_kl(p_top, p_tail, *gather_with_tail(q, ids)).sum()
        (grad,) = torch.autograd.grad(loss, q)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
