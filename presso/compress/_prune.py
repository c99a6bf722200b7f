"""Pruning masks: magnitude and Wanda scores, unstructured or N:M.

Scores: magnitude ``|W|``; Wanda ``|W_ij| * ||X_j||_2`` where ``||X_j||_2`` is the L2 norm of
input feature ``j`` over the calibration tokens (Sun et al., 2023).

Counts are exact whatever the ties (unstructured: tied scores are pruned in position order):

* magnitude, unstructured: the ``round(amount * numel)`` lowest scores of the whole matrix;
* Wanda, unstructured: the ``round(amount * in)`` lowest scores of each output row;
* N:M (either criterion): in every run of M consecutive inputs of a row, the N highest
  scores are kept.
"""

from __future__ import annotations

import torch


def _scores(weight: torch.Tensor, input_sq_norms: torch.Tensor | None) -> torch.Tensor:
    """float32 pruning scores: ``|W|``, times ``sqrt(input_sq_norms)`` per input for Wanda."""
    scores = weight.detach().to(torch.float32).abs()
    if input_sq_norms is not None:
        scores.mul_(input_sq_norms.to(scores.device, torch.float32).sqrt().unsqueeze(0))
    return scores


def _lowest_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-mask of a 1-D score vector with exactly its ``k`` lowest entries pruned."""
    n = scores.numel()
    if k <= 0:
        return torch.ones(n, dtype=torch.bool, device=scores.device)
    if k >= n:
        return torch.zeros(n, dtype=torch.bool, device=scores.device)
    # kthvalue is O(n); only ties at the threshold need a position-ordered pick.
    thr = torch.kthvalue(scores, k).values
    keep = scores > thr
    excess = k - (n - int(keep.sum()))  # pruned entries (score <= thr) beyond k
    if excess < 0:
        tied = torch.nonzero(scores == thr).squeeze(1)
        keep[tied[excess:]] = True  # the last |excess| tied positions are kept
    return keep


def _rowwise_lowest_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    rows, cols = scores.shape
    if k <= 0:
        return torch.ones_like(scores, dtype=torch.bool)
    if k >= cols:
        return torch.zeros_like(scores, dtype=torch.bool)
    thr = torch.kthvalue(scores, k, dim=1, keepdim=True).values
    keep = scores > thr
    pruned = cols - keep.sum(dim=1)
    bad = torch.nonzero(pruned != k).squeeze(1)
    if bad.numel():
        # Rows with ties at the threshold: prune the tied entries in position order.
        sub = scores[bad]
        tied = sub == thr[bad]
        below = (sub < thr[bad]).sum(dim=1, keepdim=True)
        prune_tied = tied & (tied.cumsum(dim=1) <= k - below)
        keep[bad] = ~((sub < thr[bad]) | prune_tied)
    return keep


def _n_m_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    rows, cols = scores.shape
    grouped = scores.reshape(rows, cols // m, m)
    top = grouped.topk(n, dim=-1, sorted=False).indices
    keep = torch.zeros_like(grouped, dtype=torch.bool)
    keep.scatter_(-1, top, True)
    return keep.reshape(rows, cols)


@torch.no_grad()
def wanda_row_ranks(weight: torch.Tensor, input_sq_norms: torch.Tensor) -> torch.Tensor:
    """Each weight's position in its row's ascending Wanda-score order (ties in position order).

    ``ranks >= round(amount * in_features)`` is exactly the keep-mask :func:`prune_mask` gives
    for unstructured Wanda pruning at ``amount`` (the same scores, the same tie rule), so a
    search worker that sorts each row once turns every later trial's per-row selection into
    one comparison. ``int16`` when rows are shorter than 32,768, else ``int32``.
    """
    scores = _scores(weight, input_sq_norms)
    cols = scores.shape[1]
    dtype = torch.int16 if cols <= torch.iinfo(torch.int16).max else torch.int32
    order = torch.argsort(scores, dim=1, stable=True)
    ranks = torch.empty(scores.shape, dtype=dtype, device=scores.device)
    ranks.scatter_(1, order, torch.arange(cols, dtype=dtype, device=scores.device).expand_as(order).contiguous())
    return ranks


def mask_from_ranks(ranks: torch.Tensor, amount: float) -> tuple[torch.Tensor, int]:
    """Keep-mask for ``amount`` from :func:`wanda_row_ranks`, and the number of weights kept."""
    rows, cols = ranks.shape
    k = min(max(round(amount * cols), 0), cols)
    return ranks >= k, rows * (cols - k)


@torch.no_grad()
def prune_mask(
    weight: torch.Tensor,
    amount: float,
    n_m: tuple[int, int] | None,
    input_sq_norms: torch.Tensor | None = None,
) -> torch.Tensor:
    """Keep-mask (``True`` = kept) for one ``[out, in]`` weight.

    Args:
        weight: the weight matrix.
        amount: fraction to prune (ignored for N:M, where it is ``(M - N) / M``).
        n_m: ``(N, M)`` for semi-structured sparsity, ``None`` for unstructured.
        input_sq_norms: Wanda's per-input sum of squared activations ``[in]``; ``None``
            selects magnitude pruning.

    Returns:
        A ``bool`` tensor shaped like ``weight``.
    """
    scores = _scores(weight, input_sq_norms)
    if n_m is not None:
        return _n_m_mask(scores, *n_m)
    if input_sq_norms is not None:
        return _rowwise_lowest_k_mask(scores, round(amount * scores.shape[1]))
    return _lowest_k_mask(scores.reshape(-1), round(amount * scores.numel())).reshape(scores.shape)
