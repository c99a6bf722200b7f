"""Embedding objectives: ``embedding_cosine``, ``embedding_cosine_loss`` and ``probe_accuracy``.

An embedding is the mean of the last hidden states over real (mask = 1) tokens. For an
encoder that is ``last_hidden_state``; for a causal LM (no ``last_hidden_state`` in its
output) it is the last entry of ``hidden_states``. A runtime that pools itself (llama.cpp's
MEAN pooling, :class:`presso.targets._llama_runtime.LlamaCppEncoder`) hands back that mean
as ``mean_pooled``.
"""

from __future__ import annotations

import random
from typing import Any

from presso.errors import PressoError
from presso.objectives._base import (
    BaseObjective,
    Direction,
    EvalContext,
    LabelledData,
    Task,
    TrialContext,
    require_dense,
    require_reference,
)
from presso.objectives._registry import register_objective

EMBEDDING_KEY = "embedding/pooled"
"""``ctx.references[EMBEDDING_KEY]``: the dense model's pooled embeddings ``[n, hidden]``."""

_TRIAL_EMBEDDING_KEY = "embedding/pooled"


def pooled_embeddings(model: Any, batches: Any) -> Any:
    """Mean-pool the last hidden states over real tokens.

    Args:
        model: an encoder or causal LM with a Hugging Face style forward.
        batches: an iterable of ``(input_ids, attention_mask)`` already on the model's device.

    Returns:
        A float32 tensor ``[n, hidden]``.
    """
    import torch

    pooled = []
    for ids, mask in batches:
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        runtime_pooled = getattr(out, "mean_pooled", None)
        if runtime_pooled is not None:
            pooled.append(runtime_pooled.float())
            continue
        hidden = getattr(out, "last_hidden_state", None)
        if hidden is None:
            hidden = out.hidden_states[-1]
        weights = mask.unsqueeze(-1).float()
        pooled.append((hidden.float() * weights).sum(1) / weights.sum(1).clamp(min=1.0))
    return torch.cat(pooled)


def mean_cosine(a: Any, b: Any) -> float:
    """Mean row-wise cosine similarity of two ``[n, hidden]`` tensors, in float64.

    Written as ``dot / sqrt(|a|^2 |b|^2)`` so identical rows give exactly 1.0. A zero row
    counts as cosine 0.
    """
    import torch

    a, b = a.double(), b.double()
    dot = (a * b).sum(-1)
    denom = (a * a).sum(-1) * (b * b).sum(-1)
    cos = torch.where(denom > 0, dot / denom.clamp(min=1e-300).sqrt(), torch.zeros_like(dot))
    return float(cos.clamp(-1.0, 1.0).mean())


def _trial_embeddings(model: Any, ctx: EvalContext, trial: TrialContext) -> Any:
    cached = trial.cache.get(_TRIAL_EMBEDDING_KEY)
    if cached is None:
        cached = trial.cache[_TRIAL_EMBEDDING_KEY] = pooled_embeddings(model, ctx.batches())
    return cached


def _prepare_embeddings(ctx: EvalContext, objective: str) -> None:
    if EMBEDDING_KEY not in ctx.references:
        ctx.references[EMBEDDING_KEY] = pooled_embeddings(require_dense(objective, ctx), ctx.batches())


@register_objective
class EmbeddingCosineObjective(BaseObjective):
    """Mean cosine between the compressed and dense models' pooled embeddings of each
    evaluation sequence (1.0 = same directions)."""

    name = "embedding_cosine"
    direction = Direction.MAXIMIZE
    unit = "cosine"
    tasks = tuple(Task)  # a head's model still returns hidden_states

    def prepare(self, ctx: EvalContext) -> None:
        _prepare_embeddings(ctx, self.name)

    def compute(self, model: Any, ctx: EvalContext, trial: TrialContext) -> float:
        reference = require_reference(self.name, ctx, EMBEDDING_KEY)
        return mean_cosine(_trial_embeddings(model, ctx, trial), reference)


@register_objective
class EmbeddingCosineLossObjective(EmbeddingCosineObjective):
    """``1 - embedding_cosine``, for studies that want every objective minimized."""

    name = "embedding_cosine_loss"
    direction = Direction.MINIMIZE
    unit = "1 - cosine"

    def compute(self, model: Any, ctx: EvalContext, trial: TrialContext) -> float:
        return 1.0 - super().compute(model, ctx, trial)


def stratified_split(labels: list[str], train_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split row indices per class: ``round(train_fraction * n_class)`` rows to train (at least
    one, and at least one left to test when the class has two or more rows).

    Returns:
        ``(train_indices, test_indices)``, each sorted.
    """
    rng = random.Random(seed)
    train, test = [], []
    for label in sorted(set(labels)):
        rows = [i for i, y in enumerate(labels) if y == label]
        rng.shuffle(rows)
        n_train = len(rows) if len(rows) == 1 else min(max(1, round(train_fraction * len(rows))), len(rows) - 1)
        train += rows[:n_train]
        test += rows[n_train:]
    return sorted(train), sorted(test)


def _pad(token_lists: list[list[int]], pad_id: int) -> tuple[Any, Any]:
    import torch

    width = max(len(t) for t in token_lists)
    ids = torch.full((len(token_lists), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(token_lists), width), dtype=torch.long)
    for i, tokens in enumerate(token_lists):
        ids[i, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        mask[i, : len(tokens)] = 1
    return ids, mask


@register_objective
class ProbeAccuracyObjective(BaseObjective):
    """Held-out accuracy of a nearest-centroid probe on the compressed model's embeddings.

    NOTE: this scores the embeddings, not a trained head; a model with a classification
    head is scored by ``accuracy`` / ``f1_macro`` (``presso.objectives._task``). It was
    called ``accuracy`` before; a study file that still names ``accuracy`` for a model
    without a head gets an error saying so.

    The labelled rows (``ctx.labelled``, from :func:`load_labelled_csv`) are split per class
    into train and test with a fixed seed. For each trial the compressed model embeds all
    rows (mean-pooled, centred on the train rows' mean, L2-normalised), a centroid per class
    is taken over the train rows, and each test row gets the class of the most
    cosine-similar centroid. No weights are trained, so the probe adds no randomness and
    takes milliseconds. The dense model's accuracy is
    kept in ``ctx.references["probe_accuracy/dense"]`` for reports.

    Args:
        train_fraction: share of each class used to build centroids, in (0, 1).
        seed: the split's random seed.
        max_length: texts are truncated to this many tokens.
    """

    name = "probe_accuracy"
    direction = Direction.MAXIMIZE
    unit = "fraction"
    tasks = (Task.ENCODER, Task.CAUSAL_LM, Task.SEQUENCE_CLASSIFICATION)  # text,label rows only

    def __init__(self, train_fraction: float = 0.5, seed: int = 0, max_length: int = 128):
        if isinstance(train_fraction, bool) or not isinstance(train_fraction, (int, float)) or not (
            0.0 < train_fraction < 1.0
        ):
            raise PressoError(f"probe_accuracy.train_fraction: got {train_fraction!r}; allowed: a number in (0, 1)")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise PressoError(f"probe_accuracy.max_length: got {max_length!r}; allowed: an integer >= 2")
        self.train_fraction = float(train_fraction)
        self.seed = seed
        self.max_length = max_length

    @property
    def _cache_key(self) -> str:
        return f"probe_accuracy/{self.train_fraction}/{self.seed}/{self.max_length}"

    def _inputs(self, ctx: EvalContext) -> dict[str, Any]:
        cached = ctx.cache.get(self._cache_key)
        if cached is not None:
            return cached
        if not isinstance(ctx.labelled, LabelledData):
            raise PressoError(
                "objective 'probe_accuracy': no text,label data; give a CSV with columns text,label "
                "(study eval.labels, or EvalContext.labelled = load_labelled(path))"
            )
        if ctx.tokenizer is None:
            raise PressoError("objective 'probe_accuracy': EvalContext.tokenizer is None; it is needed to tokenize the CSV")
        train, test = stratified_split(ctx.labelled.labels, self.train_fraction, self.seed)
        if not test:
            raise PressoError(
                f"objective 'probe_accuracy': {len(ctx.labelled.labels)} labelled rows leave no test rows; "
                "give at least 2 rows per class"
            )
        encoded = ctx.tokenizer(list(ctx.labelled.texts), truncation=True, max_length=self.max_length)["input_ids"]
        if any(len(tokens) == 0 for tokens in encoded):
            raise PressoError("objective 'probe_accuracy': a labelled text tokenizes to no tokens")
        pad_id = ctx.tokenizer.pad_token_id if ctx.tokenizer.pad_token_id is not None else 0
        ids, mask = _pad(list(encoded), pad_id)
        classes = sorted(set(ctx.labelled.labels))
        label_ids = [classes.index(y) for y in ctx.labelled.labels]
        cached = {"ids": ids, "mask": mask, "train": train, "test": test, "labels": label_ids, "classes": classes}
        ctx.cache[self._cache_key] = cached
        return cached

    def _accuracy(self, model: Any, ctx: EvalContext) -> float:
        import torch

        data = self._inputs(ctx)
        ids, mask, size = data["ids"], data["mask"], ctx.batch_size
        batches = (
            (ids[i : i + size].to(ctx.device), mask[i : i + size].to(ctx.device)) for i in range(0, len(ids), size)
        )
        emb = pooled_embeddings(model, batches).double().cpu()
        labels = torch.tensor(data["labels"])
        train, test = torch.tensor(data["train"]), torch.tensor(data["test"])
        # NOTE: centring removes the direction all embeddings share (strong in LM hidden states),
        # which otherwise swamps the class signal in cosine similarity.
        emb = torch.nn.functional.normalize(emb - emb[train].mean(0), dim=-1)
        centroids = torch.stack(
            [emb[train][labels[train] == c].mean(0) for c in range(len(data["classes"]))]
        )
        centroids = torch.nn.functional.normalize(centroids, dim=-1)
        predicted = (emb[test] @ centroids.T).argmax(-1)
        return float((predicted == labels[test]).double().mean())

    def prepare(self, ctx: EvalContext) -> None:
        self._inputs(ctx)
        if "probe_accuracy/dense" not in ctx.references:
            ctx.references["probe_accuracy/dense"] = self._accuracy(require_dense(self.name, ctx), ctx)

    def compute(self, model: Any, ctx: EvalContext, trial: TrialContext) -> float:
        return self._accuracy(model, ctx)
