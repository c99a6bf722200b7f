"""Causal-LM objectives: ``perplexity``, ``ppl_ratio`` and ``kl_divergence``.

All three come out of one forward pass over the evaluation batches, shared through
``TrialContext.cache``; the dense model's pass runs once per worker in ``prepare``.

KL storage (the reason for ``top_k``): a full reference of next-token log-probs is
``positions x vocab`` floats, 400 MB in fp32 for 16 x 128 tokens of SmolLM2 (vocab 49,152).
Instead the dense model's ``top_k`` log-probs (fp32), token ids (int32) and tail log-mass are
kept per position, 16 MB for that example at the default ``top_k=1024``. KL is then taken over
``top_k + 1`` outcomes by :func:`presso.compress.topk_kl` (the one implementation, shared with
recovery distillation): it never exceeds the full KL, equals it when ``top_k >= vocab``, and
is 0 exactly for the dense model against itself.
"""

from __future__ import annotations

import math
from typing import Any

from presso.errors import PressoError
from presso.objectives._base import (
    BaseObjective,
    Direction,
    EvalContext,
    Task,
    TrialContext,
    require_dense,
    require_reference,
)
from presso.objectives._registry import register_objective

NLL_KEY = "causal_lm/nll"
"""``ctx.references[NLL_KEY] = (nll_sum, n_targets)`` of the dense model."""

_PASS_KEY = "causal_lm/pass"


def topk_key(top_k: int) -> str:
    """The ``ctx.references`` key holding the dense top-k log-probs for ``top_k``."""
    return f"causal_lm/top{top_k}"


def _logits(model: Any, ids: Any, mask: Any) -> Any:
    out = model(input_ids=ids, attention_mask=mask)
    logits = out.logits if hasattr(out, "logits") else out[0]
    return logits.float()


def _kl_sum(reference: tuple, logp: Any, positions: Any) -> float:
    """Summed top-k + tail KL of ``logp`` against one batch of the stored dense reference."""
    from presso.compress import gather_with_tail, topk_kl

    values, indices, tail = reference
    q_top, q_tail = gather_with_tail(logp, indices)
    return float(topk_kl(values.double(), tail.double(), q_top.double(), q_tail.double())[positions].sum())


def _causal_pass(model: Any, ctx: EvalContext, store_top_k: int | None = None) -> dict[str, Any]:
    """One pass over ``ctx``'s batches: summed next-token NLL, and KL against every stored top-k.

    Args:
        model: a causal LM.
        ctx: the evaluation context.
        store_top_k: also return the model's top-k log-probs per batch (for the dense reference).

    Returns:
        ``{"nll": (sum, n_targets), "kl": {top_k: (sum, n_positions)}, "topk": [(values, ids, tail)]}``.
    """
    import torch

    kl_refs = {
        int(key[len("causal_lm/top"):]): value
        for key, value in ctx.references.items()
        if key.startswith("causal_lm/top")
    }
    n_batches = -(-ctx.input_ids.shape[0] // ctx.batch_size)
    for k, ref in kl_refs.items():
        if len(ref) != n_batches:
            raise PressoError(
                f"kl_divergence: the dense reference (top_k={k}) has {len(ref)} batches but the context now gives "
                f"{n_batches}; EvalContext.input_ids or batch_size changed after prepare_all()"
            )
    nll_sum, n_targets, n_positions = 0.0, 0, 0
    kl_sums = dict.fromkeys(kl_refs, 0.0)
    stored = []
    for b, (ids, mask) in enumerate(ctx.batches()):
        logp = torch.log_softmax(_logits(model, ids, mask), dim=-1)
        # NOTE: a target counts only when both the token and the one predicting it are real.
        target_mask = (mask[:, :-1] * mask[:, 1:]).bool()
        nll = -logp[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
        nll_sum += float(nll[target_mask].double().sum())
        n_targets += int(target_mask.sum())
        positions = mask.bool()
        n_positions += int(positions.sum())
        for k, ref in kl_refs.items():
            kl_sums[k] += _kl_sum(ref[b], logp, positions)
        if store_top_k is not None:
            from presso.compress import topk_with_tail

            values, indices, tail = topk_with_tail(logp, min(store_top_k, logp.shape[-1]))
            stored.append((values, indices.to(torch.int32), tail))
    if n_targets == 0:
        raise PressoError(
            f"evaluation input_ids: {tuple(ctx.input_ids.shape)} has no next-token targets; "
            "causal-LM objectives need sequences of at least 2 real tokens"
        )
    return {
        "nll": (nll_sum, n_targets),
        "kl": {k: (s, n_positions) for k, s in kl_sums.items()},
        "topk": stored,
    }


def _trial_pass(model: Any, ctx: EvalContext, trial: TrialContext, top_k: int | None = None) -> dict[str, Any]:
    """The trial's causal pass, computed once per trial and shared via ``trial.cache``."""
    result = trial.cache.get(_PASS_KEY)
    if result is None or (top_k is not None and top_k not in result["kl"]):
        result = _causal_pass(model, ctx)
        trial.cache[_PASS_KEY] = result
    return result


def _prepare_dense(ctx: EvalContext, objective: str, top_k: int | None = None) -> None:
    """Fill the dense NLL (and top-k log-probs) into ``ctx.references`` unless already there."""
    need_nll = NLL_KEY not in ctx.references
    need_topk = top_k is not None and topk_key(top_k) not in ctx.references
    if not (need_nll or need_topk):
        return
    dense = require_dense(objective, ctx)
    result = _causal_pass(dense, ctx, store_top_k=top_k if need_topk else None)
    if need_nll:
        ctx.references[NLL_KEY] = result["nll"]
    if need_topk:
        ctx.references[topk_key(top_k)] = result["topk"]


def _exp(x: float) -> float:
    return math.exp(x) if x < 709.0 else math.inf


@register_objective
class PerplexityObjective(BaseObjective):
    """``exp`` of the mean next-token negative log-likelihood on the evaluation tokens."""

    name = "perplexity"
    direction = Direction.MINIMIZE
    unit = "ppl"
    tasks = (Task.CAUSAL_LM,)

    def compute(self, model: Any, ctx: EvalContext, trial: TrialContext) -> float:
        nll_sum, n = _trial_pass(model, ctx, trial)["nll"]
        return _exp(nll_sum / n)


@register_objective
class PplRatioObjective(BaseObjective):
    """Perplexity divided by the dense model's perplexity on the same tokens (1.0 = no loss)."""

    name = "ppl_ratio"
    direction = Direction.MINIMIZE
    unit = "ratio"
    tasks = (Task.CAUSAL_LM,)

    def prepare(self, ctx: EvalContext) -> None:
        _prepare_dense(ctx, self.name)

    def compute(self, model: Any, ctx: EvalContext, trial: TrialContext) -> float:
        ref_sum, ref_n = require_reference(self.name, ctx, NLL_KEY)
        nll_sum, n = _trial_pass(model, ctx, trial)["nll"]
        # NOTE: exp of the difference, so the dense model against itself gives exactly 1.0.
        return _exp(nll_sum / n - ref_sum / ref_n)


@register_objective
class KLDivergenceObjective(BaseObjective):
    """Mean KL(dense || compressed) of next-token distributions, in nats per position.

    Args:
        top_k: dense log-probs kept per position (see the module docstring). Use a value
            ``>= vocab`` for the exact KL at ``positions x vocab x 8`` bytes of memory.
    """

    name = "kl_divergence"
    direction = Direction.MINIMIZE
    unit = "nats/token"
    tasks = (Task.CAUSAL_LM,)

    def __init__(self, top_k: int = 1024):
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise PressoError(f"kl_divergence.top_k: got {top_k!r}; allowed: an integer >= 1")
        self.top_k = top_k

    def prepare(self, ctx: EvalContext) -> None:
        _prepare_dense(ctx, self.name, top_k=self.top_k)

    def compute(self, model: Any, ctx: EvalContext, trial: TrialContext) -> float:
        require_reference(self.name, ctx, topk_key(self.top_k))
        kl_sum, n = _trial_pass(model, ctx, trial, top_k=self.top_k)["kl"][self.top_k]
        # NOTE: tiny negative values are float noise (KL >= 0); report them as 0.
        return max(kl_sum / n, 0.0) if not math.isnan(kl_sum) else kl_sum
