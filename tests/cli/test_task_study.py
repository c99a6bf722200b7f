"""Token classification end to end on the 2-layer tiny:bert-token-cls and a small CoNLL file:
run a study under an accuracy_drop constraint, export, apply, evaluate --report."""

import json
from pathlib import Path

import pytest
import yaml

from presso.cli import main

CONLL = Path(__file__).parents[1] / "objectives" / "data" / "tiny_ner.conll"


def run_cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture()
def study(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ner.conll").write_text(CONLL.read_text(encoding="utf-8"), encoding="utf-8")
    data = {
        "name": "ner", "model": "tiny:bert-token-cls", "space": "builtin:tiny",
        "objectives": ["f1_macro", "accuracy", "accuracy_drop", "size_fraction"],
        "constraints": ["accuracy_drop <= 0.5"], "trials": 4, "device": "cpu",
        "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
        "eval": {"sequences": 4, "seq_len": 32, "labels": "ner.conll"},  # relative to the study file
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    code, _, err = run_cli(capsys, "run", str(path), "--no-progress")
    assert code == 0, err
    return str(path)


def test_token_classification_study_reproduces_and_reports(study, capsys):
    code, out, err = run_cli(capsys, "export", "--study", "ner", "--pick", "min size_fraction", "-o", "plan.yaml")
    assert code == 0, err
    number = int(out.split("exported trial ")[1].split()[0])
    front = json.loads(run_cli(capsys, "pareto", "--study", "ner", "--format", "json")[1])
    recorded = next(r for r in front if r["number"] == number)["values"]
    assert set(recorded) == {"f1_macro", "accuracy", "accuracy_drop", "size_fraction"}

    code, _, err = run_cli(capsys, "apply", "plan.yaml", "--out", "model-out", "--study-file", study)
    assert code == 0, err
    code, out, err = run_cli(capsys, "evaluate", "model-out", "--study-file", study, "--report", "--format", "json")
    assert code == 0, err
    result = json.loads(out)
    assert result["values"] == recorded  # exactly: same weights, same labelled set
    compressed, dense = result["report"]["compressed"], result["report"]["uncompressed"]
    assert {"PER", "LOC", "micro avg", "macro avg", "weighted avg"} <= set(compressed) & set(dense)
    assert compressed["macro avg"]["f1-score"] == pytest.approx(recorded["f1_macro"])
    assert dense["PER"]["support"] == 4.0

    # the same reports in MLflow: on the exported (front) trial's run, the dense one on the parent run
    from mlflow import MlflowClient

    client = MlflowClient(yaml.safe_load(Path(study).read_text())["tracking_uri"])
    experiment = client.get_experiment_by_name("ner").experiment_id
    (trial_run,) = client.search_runs([experiment], f"tags.`presso.trial_number` = '{number}'")
    (parent,) = client.search_runs([experiment], "tags.`presso.kind` = 'study-run'")

    def artifact(run, name):
        return Path(client.download_artifacts(run.info.run_id, name, str(Path(study).parent))).read_text()

    assert json.loads(artifact(trial_run, "classification_report.json")) == compressed
    assert "macro avg" in artifact(trial_run, "classification_report.txt")
    assert json.loads(artifact(parent, "uncompressed/classification_report.json")) == dense

    code, out, err = run_cli(capsys, "evaluate", "model-out", "--study-file", study, "--report")
    assert code == 0, err
    header = next(line for line in out.splitlines() if line.startswith("compressed ("))
    assert "uncompressed" in header  # the two reports stand side by side
    assert [line.count("macro avg") for line in out.splitlines() if "macro avg" in line] == [2]  # one line, both


def test_report_needs_a_task_model(study, capsys, tmp_path):
    data = yaml.safe_load(Path(study).read_text())
    data.update(name="enc", model="tiny:bert", objectives=["embedding_cosine", "size_fraction"], constraints=[],
                tracking_uri=None)
    data["eval"].pop("labels")
    enc = tmp_path / "enc.yaml"
    enc.write_text(yaml.safe_dump(data))
    assert run_cli(capsys, "run", str(enc), "--no-progress")[0] == 0
    assert run_cli(capsys, "export", "--study", "enc", "--pick", "min size_fraction", "-o", "p.yaml")[0] == 0
    assert run_cli(capsys, "apply", "p.yaml", "--out", "enc-out", "--study-file", str(enc))[0] == 0
    code, _, err = run_cli(capsys, "evaluate", "enc-out", "--study-file", str(enc), "--report")
    assert code != 0 and "needs a model with a classification head" in err
