"""Task objectives for models with a classification head: ``accuracy``, ``f1_macro``,
``f1_micro``, and ``accuracy_drop`` / ``f1_macro_drop`` against the uncompressed model.

The labelled set (``ctx.labelled``) is the test set: the model was fine-tuned elsewhere, so
no row is used for training here. Metrics come from scikit-learn (sequence classification)
and seqeval (token classification, entity-level as seqeval computes it); torch, sklearn and
seqeval load inside the functions that measure.

- Sequence classification: each text (truncated to ``max_length`` tokens) gets the label of
  the arg-max logit, named by ``model.config.id2label``.
- Token classification: each word gets the tag predicted at its first sub-token; words cut
  off by ``max_length`` are predicted ``O``. ``accuracy`` is seqeval's token accuracy,
  ``f1_*`` its entity-level F1.
"""

from __future__ import annotations

import json
from typing import Any

from presso.errors import PressoError
from presso.objectives._base import (
    BaseObjective,
    Direction,
    EvalContext,
    LabelledData,
    TaggedData,
    Task,
    TrialContext,
    require_dense,
    require_reference,
)
from presso.objectives._registry import register_objective

TASK_METRICS = ("accuracy", "f1_macro", "f1_micro")
DENSE_KEY = "task/dense"
"""``ctx.references[DENSE_KEY]``: ``{"scores": {metric: value}, "gold": [...], "predictions": [...]}`` of the dense model."""
PREDICTIONS_KEY = "task/predictions"
"""``TrialContext.cache[PREDICTIONS_KEY]``: ``(gold, predicted)`` of the trial's first task pass."""
REPORT_TEXT = "classification_report.txt"
REPORT_JSON = "classification_report.json"

_TASKS = (Task.SEQUENCE_CLASSIFICATION, Task.TOKEN_CLASSIFICATION)
_MAX_LENGTH = 256


def _label_names(model: Any) -> list[str]:
    config = model.config
    return [str(config.id2label[i]) for i in range(config.num_labels)]


def _map_labels(gold: list[str], names: list[str], where: str) -> dict[str, str]:
    """``{file label: model label}``; file labels may be the model's names or its ids (``"3"``)."""
    mapping = {name: name for name in names}
    mapping.update({str(i): name for i, name in enumerate(names)})
    missing = sorted({g for g in gold if g not in mapping})
    if missing:
        raise PressoError(
            f"{where}: labels {missing[:5]} are not classes of the model's head; "
            f"allowed: {names} (config.id2label) or their ids 0..{len(names) - 1}"
        )
    return mapping


def _inputs(model: Any, ctx: EvalContext, max_length: int) -> dict[str, Any]:
    """Tokenized rows and gold labels, built once per worker (keyed by ``max_length``)."""
    key = f"task/inputs/{max_length}"
    if key in ctx.cache:
        return ctx.cache[key]
    task = Task(ctx.task)
    if ctx.tokenizer is None:
        raise PressoError("task objectives: EvalContext.tokenizer is None; it is needed to tokenize the labelled data")
    names = _label_names(model)
    if task is Task.SEQUENCE_CLASSIFICATION:
        if not isinstance(ctx.labelled, LabelledData):
            raise PressoError(
                "task objectives: a sequence classifier needs text,label data; give study eval.labels: a .csv or "
                ".jsonl file with text and label columns"
            )
        mapping = _map_labels(ctx.labelled.labels, names, "labelled data")
        enc = ctx.tokenizer(list(ctx.labelled.texts), truncation=True, max_length=max_length,
                            padding=True, return_tensors="pt")
        gold = [mapping[g] for g in ctx.labelled.labels]
        data = {"ids": enc["input_ids"], "mask": enc["attention_mask"], "gold": gold, "names": names}
    else:
        if not isinstance(ctx.labelled, TaggedData):
            raise PressoError(
                "task objectives: a token classifier needs tagged words; give study eval.labels: a CoNLL-style "
                "file (one 'word tag' line per word, a blank line between sentences)"
            )
        if not getattr(ctx.tokenizer, "is_fast", False):
            raise PressoError("task objectives: token classification needs a fast tokenizer (it maps sub-tokens to words)")
        gold_tags = [t for tags in ctx.labelled.tags for t in tags]
        mapping = _map_labels(gold_tags, names, "tagged data")
        enc = ctx.tokenizer(ctx.labelled.words, is_split_into_words=True, truncation=True,
                            max_length=max_length, padding=True, return_tensors="pt")
        firsts = []  # per sentence: the position of each word's first sub-token (None: cut off)
        for row, words in enumerate(ctx.labelled.words):
            first: dict[int, int] = {}
            for position, word in enumerate(enc.word_ids(row)):
                if word is not None and word not in first:
                    first[word] = position
            firsts.append([first.get(w) for w in range(len(words))])
        gold = [[mapping[t] for t in tags] for tags in ctx.labelled.tags]
        data = {"ids": enc["input_ids"], "mask": enc["attention_mask"], "gold": gold, "names": names,
                "firsts": firsts}
    ctx.cache[key] = data
    return data


def predict(model: Any, ctx: EvalContext, max_length: int = _MAX_LENGTH) -> tuple[list, list]:
    """The model's predictions on ``ctx.labelled`` and the gold labels, as label names.

    Returns:
        ``(gold, predicted)``: lists of labels (sequence classification) or lists of tag
        lists, one per sentence (token classification).
    """
    import torch

    with torch.inference_mode():  # NOTE: the cached inputs are inference tensors; keep them out of autograd
        data = _inputs(model, ctx, max_length)
        ids, mask, names = data["ids"], data["mask"], data["names"]
        argmax = []
        for start in range(0, ids.shape[0], ctx.batch_size):
            stop = start + ctx.batch_size
            out = model(input_ids=ids[start:stop].to(ctx.device), attention_mask=mask[start:stop].to(ctx.device))
            argmax.extend(out.logits.argmax(-1).cpu().tolist())
    if Task(ctx.task) is Task.SEQUENCE_CLASSIFICATION:
        return data["gold"], [names[i] for i in argmax]
    predicted = [[names[row[p]] if p is not None else "O" for p in firsts]
                 for row, firsts in zip(argmax, data["firsts"])]
    return data["gold"], predicted


def task_scores(gold: list, predicted: list, task: Task | str) -> dict[str, float]:
    """``{"accuracy", "f1_macro", "f1_micro"}`` by scikit-learn (labels) or seqeval (tag lists)."""
    if Task(task) is Task.TOKEN_CLASSIFICATION:
        from seqeval.metrics import accuracy_score, f1_score
    else:
        from sklearn.metrics import accuracy_score, f1_score
    return {
        "accuracy": float(accuracy_score(gold, predicted)),
        "f1_macro": float(f1_score(gold, predicted, average="macro", zero_division=0)),
        "f1_micro": float(f1_score(gold, predicted, average="micro", zero_division=0)),
    }


def task_report(gold: list, predicted: list, task: Task | str) -> tuple[str, dict[str, Any]]:
    """The classification report (precision, recall, F1 and support per class, and the
    micro/macro/weighted averages) as text and as a JSON-ready dict."""
    if Task(task) is Task.TOKEN_CLASSIFICATION:
        from seqeval.metrics import classification_report
    else:
        from sklearn.metrics import classification_report
    text = classification_report(gold, predicted, digits=4, zero_division=0)
    table = classification_report(gold, predicted, digits=4, zero_division=0, output_dict=True)

    def plain(value):
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        return float(value)

    return text, plain(table)


def report_files(gold: list, predicted: list, task: Task | str) -> dict[str, str]:
    """``{REPORT_TEXT: text, REPORT_JSON: json}``: the classification report as files to attach."""
    text, table = task_report(gold, predicted, task)
    return {REPORT_TEXT: text, REPORT_JSON: json.dumps(table, indent=1)}


def trial_report_files(ctx: EvalContext, trial: TrialContext) -> dict[str, str]:
    """The report of a trial's model from the predictions its task objectives already made
    (no extra pass over the labelled set); ``{}`` when no task objective ran."""
    made = trial.cache.get(PREDICTIONS_KEY)
    return report_files(*made, ctx.task) if made else {}


def dense_report_files(ctx: EvalContext) -> dict[str, str]:
    """The uncompressed model's report from the predictions ``prepare`` kept; ``{}`` without task objectives."""
    dense = ctx.references.get(DENSE_KEY)
    return report_files(dense["gold"], dense["predictions"], ctx.task) if dense else {}


def _trial_scores(model: Any, ctx: EvalContext, trial: TrialContext, max_length: int) -> dict[str, float]:
    # NOTE: every task objective of a trial shares one pass over the labelled set.
    key = f"task/scores/{max_length}"
    if key not in trial.cache:
        gold, predicted = predict(model, ctx, max_length)
        trial.cache.setdefault(PREDICTIONS_KEY, (gold, predicted))
        trial.cache[key] = task_scores(gold, predicted, ctx.task)
    return trial.cache[key]


class _TaskMetric(BaseObjective):
    """A task metric on the labelled set; subclasses set ``metric`` (one of :data:`TASK_METRICS`)."""

    metric: str
    unit = "fraction"
    tasks = _TASKS

    def __init__(self, max_length: int = _MAX_LENGTH):
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise PressoError(f"{self.name}.max_length: got {max_length!r}; allowed: an integer >= 2")
        self.max_length = max_length

    def prepare(self, ctx: EvalContext) -> None:
        key = f"{DENSE_KEY}/{self.max_length}"
        if key not in ctx.references:
            gold, predicted = predict(require_dense(self.name, ctx), ctx, self.max_length)
            ctx.references[key] = {"scores": task_scores(gold, predicted, ctx.task), "gold": gold,
                                   "predictions": predicted}
            ctx.references.setdefault(DENSE_KEY, ctx.references[key])

    def dense_value(self, ctx: EvalContext) -> float:
        return require_reference(self.name, ctx, f"{DENSE_KEY}/{self.max_length}")["scores"][self.metric]

    def compute(self, model: Any, ctx: EvalContext, trial: TrialContext) -> float:
        return _trial_scores(model, ctx, trial, self.max_length)[self.metric]


@register_objective
class AccuracyObjective(_TaskMetric):
    """Share of test rows (or, for tagging, tokens) whose predicted label is right."""

    name = "accuracy"
    metric = "accuracy"
    direction = Direction.MAXIMIZE


@register_objective
class F1MacroObjective(_TaskMetric):
    """F1 averaged over classes (entity types for tagging), each class counting the same."""

    name = "f1_macro"
    metric = "f1_macro"
    direction = Direction.MAXIMIZE


@register_objective
class F1MicroObjective(_TaskMetric):
    """F1 over all decisions pooled (entities for tagging; equals accuracy for single-label classes)."""

    name = "f1_micro"
    metric = "f1_micro"
    direction = Direction.MAXIMIZE


class _Drop(_TaskMetric):
    """``dense - compressed`` of ``metric``, in absolute points of the fraction: 0.01 means one
    percentage point lost (negative when the compressed model scores higher)."""

    direction = Direction.MINIMIZE
    unit = "fraction lost"

    def compute(self, model: Any, ctx: EvalContext, trial: TrialContext) -> float:
        # NOTE: rounded so that one post in 100 is exactly 0.01 (0.93 - 0.92 is 0.01000...0009 in
        # floats, which a constraint `accuracy_drop <= 0.01` would reject).
        return round(self.dense_value(ctx) - super().compute(model, ctx, trial), 12)


@register_objective
class AccuracyDropObjective(_Drop):
    __doc__ = _Drop.__doc__
    name = "accuracy_drop"
    metric = "accuracy"


@register_objective
class F1MacroDropObjective(_Drop):
    __doc__ = _Drop.__doc__
    name = "f1_macro_drop"
    metric = "f1_macro"
