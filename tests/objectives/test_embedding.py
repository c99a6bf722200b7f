"""embedding_cosine, embedding_cosine_loss, probe_accuracy and the labelled-CSV loader."""

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
    load_labelled_csv,
    measure_all,
)
from presso.objectives._embedding import mean_cosine, pooled_embeddings, stratified_split

from .conftest import perturb_

EMB = ["embedding_cosine", "embedding_cosine_loss", "probe_accuracy"]


@pytest.mark.parametrize("task, model_name", [("encoder", "bert"), ("causal-lm", "llama")])
def test_dense_against_itself(task, model_name, request, make_ctx):
    model = request.getfixturevalue(model_name)
    ctx, objectives = make_ctx(task, model, EMB)
    values = measure_all(objectives, model, ctx, TrialContext())
    assert values["embedding_cosine"] == 1.0
    assert values["embedding_cosine_loss"] == 0.0
    assert values["probe_accuracy"] == ctx.references["probe_accuracy/dense"]
    assert 0.0 <= values["probe_accuracy"] <= 1.0


def test_perturbed_encoder_is_worse(bert, make_ctx):
    ctx, objectives = make_ctx("encoder", bert, EMB)
    values = measure_all(objectives, perturb_(copy.deepcopy(bert), scale=0.5), ctx, TrialContext())
    worse = measure_all(objectives, perturb_(copy.deepcopy(bert), scale=4.0), ctx, TrialContext())
    assert worse["embedding_cosine"] < values["embedding_cosine"] < 1.0
    assert worse["embedding_cosine_loss"] > values["embedding_cosine_loss"] > 0.0
    assert values["embedding_cosine_loss"] == pytest.approx(1.0 - values["embedding_cosine"], abs=1e-12)


def test_probe_accuracy_separates_easy_classes_and_collapses_for_a_dead_model(bert, make_ctx):
    ctx, (accuracy,) = make_ctx("encoder", bert, ["probe_accuracy"])
    assert ctx.references["probe_accuracy/dense"] >= 0.8  # disjoint vocabularies per class
    dead = copy.deepcopy(bert)
    with torch.no_grad():
        for p in dead.parameters():
            p.zero_()
    # every embedding is zero, so every test row gets the first class: chance level
    assert accuracy.measure(dead, ctx, TrialContext()) == 0.5


def test_pooling_ignores_padding(bert):
    ids = torch.tensor([[101, 2000, 2001, 102]])
    padded = torch.tensor([[101, 2000, 2001, 102, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    with torch.inference_mode():
        a = pooled_embeddings(bert, [(ids, torch.ones_like(ids))])
        b = pooled_embeddings(bert, [(padded, mask)])
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_mean_cosine_known_values():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    b = torch.tensor([[0.0, 2.0], [2.0, 2.0], [1.0, 0.0]])
    assert mean_cosine(a, b) == pytest.approx((0.0 + 1.0 + 0.0) / 3)
    x = torch.randn(5, 7)
    assert mean_cosine(x, x) == 1.0
    assert mean_cosine(x, -x) == -1.0


def test_stratified_split():
    labels = ["a"] * 5 + ["b"] * 2 + ["c"]
    train, test = stratified_split(labels, 0.5, seed=0)
    assert sorted(train + test) == list(range(8))
    assert sum(labels[i] == "b" for i in train) == 1 and sum(labels[i] == "b" for i in test) == 1
    assert [labels[i] for i in train].count("c") == 1  # a singleton class can only be a centroid
    assert stratified_split(labels, 0.5, seed=0) == (train, test)


def test_probe_accuracy_needs_labelled_data_and_tokenizer(bert, eval_batch, tokenizer):
    objective = get_objective("probe_accuracy")
    ctx = EvalContext(task="encoder", device="cpu", input_ids=eval_batch[0], dense_model=bert, tokenizer=tokenizer)
    with pytest.raises(PressoError, match="no text,label data"):
        objective.prepare(ctx)
    ctx.labelled, ctx.tokenizer = LabelledData(["a", "b"], ["x", "y"]), None
    with pytest.raises(PressoError, match="tokenizer"):
        objective.prepare(ctx)
    ctx.tokenizer = tokenizer
    with pytest.raises(PressoError, match="no test rows"):
        objective.prepare(ctx)


@pytest.mark.parametrize(
    "options, match",
    [({"train_fraction": 1.0}, "train_fraction"), ({"max_length": 1}, "max_length")],
)
def test_probe_accuracy_bad_options(options, match):
    with pytest.raises(PressoError, match=match):
        get_objective("probe_accuracy", **options)


def test_load_labelled_csv(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text('text,label\n"hello, world",greeting\nstocks fell,finance\n', encoding="utf-8")
    data = load_labelled_csv(path)
    assert data.texts == ["hello, world", "stocks fell"] and data.labels == ["greeting", "finance"]


@pytest.mark.parametrize(
    "content, match",
    [
        ("sentence,label\nhi,a\n", "no column 'text'; found columns: sentence, label"),
        ("text,label\n", "no data rows"),
        ("text,label\nhi,a\n,b\n", "line 3: empty"),
        ("text,label\nhi,a\nho,a\n", "at least 2 classes"),
    ],
)
def test_load_labelled_csv_errors(tmp_path, content, match):
    path = tmp_path / "bad.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(PressoError, match=match):
        load_labelled_csv(path)


def test_load_labelled_csv_missing_file(tmp_path):
    with pytest.raises(PressoError, match="does not exist"):
        load_labelled_csv(tmp_path / "nope.csv")
