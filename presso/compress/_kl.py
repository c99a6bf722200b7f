"""Top-k + tail KL divergence: the one implementation (recovery distillation and the
``kl_divergence`` objective both use it).

Keeping a full reference distribution costs ``positions x vocab`` floats, so the reference P
keeps only its top-k log-probs, their token ids and the log of the mass outside them (the
"tail"). KL(P || Q) is then taken over ``k + 1`` outcomes: the k tokens and one tail bucket.
By the data-processing inequality this never exceeds the full KL, equals it when k covers the
vocabulary (the tail is empty), and is 0 for a model against itself.
"""

from __future__ import annotations

import torch

KL_TAIL_LOG_FLOOR = -80.0
"""Floor on Q's tail log-mass. A model that moves all mass into P's top-k then gets a finite
(large) KL instead of an infinite one. ``exp(-80)`` is still a normal float32, so the float32
training loss and the float64 objective floor the same way."""


def topk_with_tail(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The reference side: top-``k`` log-probs, their ids and the tail log-mass of ``logits``.

    Args:
        logits: ``[..., vocab]`` logits (or log-probs).
        k: tokens kept per position, at most ``vocab``.

    Returns:
        ``(top_logprobs [..., k], ids [..., k], tail_logprob [...])``; the tail is ``-inf`` when
        ``k`` covers the vocabulary.
    """
    logz = torch.logsumexp(logits, dim=-1, keepdim=True)
    top, ids = logits.topk(k, dim=-1)
    return top - logz, ids, _tail(logits, ids, logz)


def gather_with_tail(logits: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The compared side: log-probs of ``logits`` at the reference's ``ids`` and its tail log-mass.

    Returns:
        ``(logprobs [..., k], tail_logprob [...])``.
    """
    logz = torch.logsumexp(logits, dim=-1, keepdim=True)
    ids = ids.long()
    return logits.gather(-1, ids) - logz, _tail(logits, ids, logz)


def _tail(logits, ids, logz):
    """log of the mass outside ``ids``, by masking (``1 - sum`` loses the small tails)."""
    masked = logits.scatter(-1, ids, float("-inf"))
    return (torch.logsumexp(masked, dim=-1, keepdim=True) - logz).squeeze(-1)


def topk_kl(p_top: torch.Tensor, p_tail: torch.Tensor, q_top: torch.Tensor, q_tail: torch.Tensor) -> torch.Tensor:
    """Per-position KL(P || Q) over P's top-k tokens plus one tail bucket (differentiable in Q).

    Args:
        p_top, p_tail: the reference's ``topk_with_tail`` log-probs and tail log-mass.
        q_top, q_tail: the compared model's ``gather_with_tail`` at the same ids.

    Returns:
        ``[...]`` KL per position, in the inputs' dtype.

    Example::

        >>> p, q = torch.randn(3, 10), torch.randn(3, 10)
        >>> p_top, ids, p_tail = topk_with_tail(p, 10)
        >>> full = (p.log_softmax(-1).exp() * (p.log_softmax(-1) - q.log_softmax(-1))).sum(-1)
        >>> bool(torch.allclose(topk_kl(p_top, p_tail, *gather_with_tail(q, ids)), full, atol=1e-5))
        True
    """
    head = (p_top.exp() * (p_top - q_top)).sum(-1)
    # An empty tail (k covers the vocabulary, log-mass -inf) adds no term.
    tail = torch.where(torch.isfinite(p_tail), p_tail.exp() * (p_tail - q_tail.clamp(min=KL_TAIL_LOG_FLOOR)),
                       torch.zeros_like(p_tail))
    return head + tail
