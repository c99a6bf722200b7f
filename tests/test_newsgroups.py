"""The labelled mini_newsgroup posts and the builtin:minilm-newsgroups classifier."""

import pytest

from presso.data import newsgroups
from presso.errors import PressoError
from presso.objectives import load_labelled


def test_halves_are_fixed_disjoint_balanced_and_headerless():
    train, test = newsgroups("train"), newsgroups("test")
    assert len(train[0]) == len(test[0]) == 100
    assert not set(train[0]) & set(test[0])
    for texts, labels in (train, test):
        assert sorted(set(labels)) == ["alt.atheism", "sci.space"]
        assert labels.count("sci.space") == 50
        assert not any(t.startswith(("Newsgroups:", "From:", "Path:")) for t in texts)  # the header names the label
    assert newsgroups("test") == test
    assert load_labelled("builtin:newsgroups-test").texts == test[0]
    with pytest.raises(PressoError, match="allowed: 'train', 'test'"):
        newsgroups("dev")
    with pytest.raises(PressoError, match=r"unknown built-in 'builtin:newsgroups'; allowed: \['builtin:newsgroups-train'"):
        load_labelled("builtin:newsgroups")


@pytest.mark.slow
def test_classifier_is_trained_once_and_scores_its_record(tmp_path_factory):
    """First use trains and caches (minutes on a CPU); the cached model's accuracy on the test
    half, measured by the `accuracy` objective, is the one `presso models` prints."""
    import torch

    from presso.models import load_model, newsgroups_metrics
    from presso.objectives import EvalContext, TrialContext, get_objective, prepare_all

    loaded = load_model("builtin:minilm-newsgroups")
    record = newsgroups_metrics()
    assert record and record["test_rows"] == 100 and record["test_accuracy"] >= 0.9
    assert loaded.task == "sequence-classification"
    ctx = EvalContext(task=loaded.task, device="cpu", input_ids=torch.ones(1, 4, dtype=torch.long),
                      tokenizer=loaded.tokenizer, dense_model=loaded.model,
                      labelled=load_labelled("builtin:newsgroups-test"), batch_size=16)
    accuracy = get_objective("accuracy")
    prepare_all([accuracy], ctx)
    assert accuracy.measure(loaded.model, ctx, TrialContext()) == pytest.approx(record["test_accuracy"])


def test_models_says_whether_the_classifier_is_trained(tmp_path, monkeypatch, capsys):
    import json

    from presso.cli import main

    monkeypatch.setenv("PRESSO_CACHE", str(tmp_path))
    assert main(["models"]) == 0
    assert "not trained yet: the first use fine-tunes it" in capsys.readouterr().out
    record = tmp_path / "minilm-newsgroups"
    record.mkdir()
    (record / "presso_training.json").write_text(json.dumps(
        {"test_accuracy": 0.93, "test_rows": 100, "train_seconds": 227.5, "threads": 2}))
    assert main(["models"]) == 0
    assert "test accuracy 0.9300 on 100 held-out posts (trained in 228 s on 2 CPU threads)" in capsys.readouterr().out
