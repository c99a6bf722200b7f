"""perplexity, ppl_ratio and kl_divergence on a tiny fitted Llama."""

from __future__ import annotations

import math

import pytest
import torch

from presso.errors import PressoError
from presso.objectives import NonFiniteObjective, TrialContext, get_objective, measure_all
from presso.objectives._language import NLL_KEY, topk_key

from .conftest import perturb_

LM = ["perplexity", "ppl_ratio", "kl_divergence"]


def _reference_perplexity(model, ids, mask):
    """Perplexity the textbook way: HF's own shifted cross-entropy over the real tokens."""
    labels = ids.masked_fill(mask == 0, -100)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum"
    )
    return math.exp(loss.item() / int((labels[:, 1:] != -100).sum()))


def test_dense_against_itself_is_exact(llama, make_ctx, trial):
    ctx, objectives = make_ctx("causal-lm", llama, LM)
    values = measure_all(objectives, llama, ctx, trial)
    assert values["ppl_ratio"] == 1.0
    assert values["kl_divergence"] == 0.0
    assert values["perplexity"] == pytest.approx(_reference_perplexity(llama, ctx.input_ids, ctx.attention_mask), rel=1e-5)


def test_perplexity_matches_cross_entropy_and_ignores_batching(llama, make_ctx, trial):
    ctx1, (ppl,) = make_ctx("causal-lm", llama, ["perplexity"], batch_size=1)
    ctx6, _ = make_ctx("causal-lm", llama, ["perplexity"], batch_size=6)
    one = ppl.measure(llama, ctx1, TrialContext())
    six = ppl.measure(llama, ctx6, TrialContext())
    assert one == pytest.approx(six, rel=1e-5)
    assert six == pytest.approx(_reference_perplexity(llama, ctx6.input_ids, ctx6.attention_mask), rel=1e-5)
    assert 1.0 < six < 30522  # fitted: far better than uniform over the vocabulary


def test_perturbed_model_is_worse(llama, make_ctx):
    import copy

    ctx, objectives = make_ctx("causal-lm", llama, LM)
    damaged = perturb_(copy.deepcopy(llama), scale=1.0)
    values = measure_all(objectives, damaged, ctx, TrialContext(number=1))
    assert values["ppl_ratio"] > 1.05
    assert values["kl_divergence"] > 1e-3
    dense_ppl = math.exp(ctx.references[NLL_KEY][0] / ctx.references[NLL_KEY][1])
    assert values["perplexity"] == pytest.approx(values["ppl_ratio"] * dense_ppl, rel=1e-9)


def test_kl_grows_with_damage(llama, make_ctx):
    import copy

    ctx, (kl,) = make_ctx("causal-lm", llama, ["kl_divergence"])
    small = kl.measure(perturb_(copy.deepcopy(llama), scale=0.05), ctx, TrialContext())
    large = kl.measure(perturb_(copy.deepcopy(llama), scale=1.0), ctx, TrialContext())
    assert 0.0 < small < large


def test_shared_forward_pass_per_trial(llama, make_ctx, monkeypatch):
    ctx, objectives = make_ctx("causal-lm", llama, LM)
    calls = []
    original = llama.forward
    monkeypatch.setattr(llama, "forward", lambda *a, **k: calls.append(1) or original(*a, **k))
    measure_all(objectives, llama, ctx, TrialContext())
    assert len(calls) == 2  # 6 rows in batches of 4: one pass, shared by the three objectives


def test_prepare_runs_dense_pass_once(llama, make_ctx):
    ctx, objectives = make_ctx("causal-lm", llama, LM, options={"kl_divergence": {"top_k": 7}})
    stored = ctx.references[topk_key(7)]
    assert [v.shape[-1] for v, _, _ in stored] == [7, 7] and stored[0][1].dtype == torch.int32
    assert stored[0][2].shape == stored[0][0].shape[:-1]  # one tail log-mass per position
    before = dict(ctx.references)
    for objective in objectives:
        objective.prepare(ctx)  # idempotent
    assert all(ctx.references[k] is before[k] for k in before)


def test_measure_without_prepare_says_so(llama, eval_batch):
    from presso.objectives import EvalContext

    ctx = EvalContext(task="causal-lm", device="cpu", input_ids=eval_batch[0])
    with pytest.raises(PressoError, match="prepare_all"):
        get_objective("ppl_ratio").measure(llama, ctx, TrialContext())


def test_nan_weights_raise_non_finite(llama, make_ctx):
    ctx, objectives = make_ctx("causal-lm", llama, LM)
    with torch.no_grad():
        llama.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")
    for objective in objectives:
        with pytest.raises(NonFiniteObjective, match=objective.name) as info:
            objective.measure(llama, ctx, TrialContext())
        assert info.value.objective == objective.name and isinstance(info.value, PressoError)


def test_language_objectives_reject_encoders(bert, make_ctx):
    with pytest.raises(PressoError, match="does not apply to task 'encoder'"):
        make_ctx("encoder", bert, ["ppl_ratio"])


def test_bad_top_k():
    with pytest.raises(PressoError, match="top_k"):
        get_objective("kl_divergence", top_k=0)
    with pytest.raises(PressoError, match="bad options"):
        get_objective("kl_divergence", k=3)


def test_changed_batching_after_prepare_is_caught(llama, make_ctx):
    ctx, (kl,) = make_ctx("causal-lm", llama, ["kl_divergence"], batch_size=4)
    ctx.batch_size = 2
    with pytest.raises(PressoError, match="batch_size changed after prepare_all"):
        kl.measure(llama, ctx, TrialContext())
