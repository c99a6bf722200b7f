"""Task objectives on models with a head: accuracy, f1_macro, f1_micro and their drops, the
classification report, and the labelled-data loaders (CSV, JSONL, CoNLL)."""

from __future__ import annotations

import copy

import pytest
import torch

from presso.errors import PressoError
from presso.objectives import (
    EvalContext,
    LabelledData,
    TrialContext,
    get_objective,
    load_conll,
    load_labelled,
    measure_all,
    predict,
    task_report,
    task_scores,
)

from .conftest import CONLL, LABELLED, TAGGED

NAMES = ["accuracy", "f1_macro", "f1_micro", "accuracy_drop", "f1_macro_drop"]


def test_conll_file_reads_sentences_and_skips_docstart():
    data = load_conll(CONLL)
    assert len(data.words) == 4
    assert data.words[0] == ["Alice", "Smith", "lives", "in", "Paris", "."]
    assert data.tags[1] == ["B-PER", "O", "O", "B-LOC", "I-LOC", "O"]


def test_loaders_by_suffix(tmp_path):
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text('{"text": "a cat", "label": "pets"}\n\n{"text": "a bond", "label": 1}\n', encoding="utf-8")
    data = load_labelled(jsonl)
    assert data.texts == ["a cat", "a bond"] and data.labels == ["pets", "1"]
    csv = tmp_path / "rows.csv"
    csv.write_text("text,label\na cat,pets\na bond,finance\n", encoding="utf-8")
    assert load_labelled(csv).labels == ["pets", "finance"]
    assert load_labelled(CONLL).tags == TAGGED.tags
    with pytest.raises(PressoError, match=r"suffix '\.xlsx'; allowed: \.csv, \.jsonl"):
        load_labelled(tmp_path / "rows.xlsx")
    bad = tmp_path / "bad.conll"
    bad.write_text("Alice B-PER\nlonely\n", encoding="utf-8")
    with pytest.raises(PressoError, match=r"line 2: got 'lonely'; allowed: 'word tag' columns"):
        load_conll(bad)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "a"}\n', encoding="utf-8")
    with pytest.raises(PressoError, match="line 1: empty or missing 'text' or 'label'"):
        load_labelled(broken)


def test_scores_match_hand_counts():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-LOC", "O"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-LOC", "O"]]
    scores = task_scores(gold, pred, "token-classification")
    # 5 of 6 tags right; entities: PER 1/1 found, LOC 1 of 2 found (precision 1, recall 0.5).
    assert scores["accuracy"] == pytest.approx(5 / 6)
    assert scores["f1_micro"] == pytest.approx(2 * 1.0 * (2 / 3) / (1.0 + 2 / 3))
    assert scores["f1_macro"] == pytest.approx((1.0 + 2 / 3) / 2)
    scores = task_scores(["a", "a", "b", "b"], ["a", "b", "b", "b"], "sequence-classification")
    assert scores["accuracy"] == 0.75 and scores["f1_micro"] == 0.75
    assert scores["f1_macro"] == pytest.approx((2 / 3 + 0.8) / 2)


@pytest.mark.parametrize("task, fixture, labelled", [
    ("sequence-classification", "seq_cls", LABELLED),
    ("token-classification", "token_cls", TAGGED),
])
def test_fitted_head_is_perfect_and_damage_shows_as_a_drop(task, fixture, labelled, request, make_ctx):
    model = request.getfixturevalue(fixture)
    ctx, objectives = make_ctx(task, model, NAMES, labelled=labelled)
    dense = measure_all(objectives, model, ctx, TrialContext())
    assert dense == {"accuracy": 1.0, "f1_macro": 1.0, "f1_micro": 1.0, "accuracy_drop": 0.0, "f1_macro_drop": 0.0}
    damaged = copy.deepcopy(model)
    with torch.no_grad():  # negated logits: every prediction becomes the least likely class
        damaged.classifier.weight.neg_()
        damaged.classifier.bias.neg_()
    worse = measure_all(objectives, damaged, ctx, TrialContext())
    assert worse["accuracy"] < 0.5 and worse["f1_macro"] < 0.5
    assert ctx.references["task/dense"]["scores"]["accuracy"] == 1.0  # the dense reference is untouched
    assert worse["accuracy_drop"] == pytest.approx(1.0 - worse["accuracy"])
    assert worse["f1_macro_drop"] == pytest.approx(1.0 - worse["f1_macro"])


def test_report_lists_classes_and_averages(token_cls, seq_cls, make_ctx):
    ctx, _ = make_ctx("token-classification", token_cls, ["accuracy"], labelled=TAGGED)
    text, table = task_report(*predict(token_cls, ctx), ctx.task)
    assert {"PER", "LOC", "micro avg", "macro avg", "weighted avg"} <= set(table)
    assert table["PER"]["support"] == 4.0 and table["LOC"]["f1-score"] == 1.0
    assert "precision" in text and "PER" in text
    ctx, _ = make_ctx("sequence-classification", seq_cls, ["accuracy"])
    text, table = task_report(*predict(seq_cls, ctx), ctx.task)
    assert table["pets"]["support"] == 8.0 and table["accuracy"] == 1.0 and "weighted avg" in text


def test_one_row_in_a_hundred_is_exactly_a_drop_of_001(make_ctx, seq_cls):
    ctx, (drop,) = make_ctx("sequence-classification", seq_cls, ["accuracy_drop"])
    ctx.references["task/dense/256"] = {"scores": {"accuracy": 0.93}, "predictions": []}
    trial = TrialContext()
    trial.cache["task/scores/256"] = {"accuracy": 0.92}
    assert 0.93 - 0.92 > 0.01 and drop.measure(seq_cls, ctx, trial) == 0.01


def test_labels_may_be_ids_but_must_be_classes_of_the_head(seq_cls, make_ctx):
    by_id = LabelledData(LABELLED.texts, ["0" if y == "finance" else "1" for y in LABELLED.labels])
    ctx, (accuracy,) = make_ctx("sequence-classification", seq_cls, ["accuracy"], labelled=by_id)
    assert accuracy.measure(seq_cls, ctx, TrialContext()) == 1.0
    wrong = LabelledData(LABELLED.texts, ["sport" if y == "finance" else "pets" for y in LABELLED.labels])
    with pytest.raises(PressoError, match=r"labels \['sport'\] are not classes of the model's head; allowed: \['finance', 'pets'\]"):
        make_ctx("sequence-classification", seq_cls, ["accuracy"], labelled=wrong)


def test_wrong_data_kind_or_task_is_named(token_cls, seq_cls, make_ctx):
    with pytest.raises(PressoError, match="token classifier needs tagged words"):
        make_ctx("token-classification", token_cls, ["f1_macro"], labelled=LABELLED)
    with pytest.raises(PressoError, match="sequence classifier needs text,label data"):
        make_ctx("sequence-classification", seq_cls, ["f1_macro"], labelled=None)
    with pytest.raises(PressoError, match="does not apply to task 'encoder'"):
        get_objective("accuracy").measure(seq_cls, EvalContext(task="encoder", device="cpu",
                                          input_ids=torch.ones(1, 2, dtype=torch.long)), TrialContext())
    with pytest.raises(PressoError, match="max_length"):
        get_objective("f1_macro", max_length=1)
