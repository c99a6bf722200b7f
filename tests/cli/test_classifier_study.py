"""examples/classifier.yaml on builtin:minilm-newsgroups: run, export under the accuracy
constraint, apply, evaluate --report reproduce the trial exactly (minutes on a CPU; the
first use also fine-tunes the classifier, about 4 minutes)."""

import json
from pathlib import Path

import pytest

from presso.cli import main

EXAMPLE = Path(__file__).parents[2] / "examples" / "classifier.yaml"

pytestmark = pytest.mark.slow


def run_cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_classifier_example_reproduces_accuracy_and_f1(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "run", str(EXAMPLE), "--trials", "4", "--no-progress")
    assert code == 0, err
    code, out, err = run_cli(capsys, "export", "--study", "classifier-demo", "--pick",
                             "min size_fraction where accuracy_drop <= 0.01", "-o", "plan.yaml")
    assert code == 0, err
    number = int(out.split("exported trial ")[1].split()[0])
    front = json.loads(run_cli(capsys, "pareto", "--study", "classifier-demo", "--format", "json")[1])
    recorded = next(r for r in front if r["number"] == number)["values"]
    assert recorded["accuracy_drop"] <= 0.01 and recorded["size_fraction"] < 0.5

    code, out, err = run_cli(capsys, "apply", "plan.yaml", "--out", "out", "--study-file", str(EXAMPLE))
    assert code == 0, err
    metrics = next(r for r in front if r["number"] == number)["metrics"]
    assert (f"model.safetensors (weights and header): {int(metrics['size_bytes']):,} bytes = "
            f"{recorded['size_fraction']:.5g} of the dense fp32 weights") in out  # the trial's size, said once
    code, out, err = run_cli(capsys, "evaluate", "out", "--study-file", str(EXAMPLE), "--report", "--format", "json")
    assert code == 0, err
    result = json.loads(out)
    assert result["values"] == recorded
    compressed, dense = result["report"]["compressed"], result["report"]["uncompressed"]
    assert compressed["macro avg"]["f1-score"] == pytest.approx(recorded["f1_macro"])
    assert dense["accuracy"] - compressed["accuracy"] == pytest.approx(recorded["accuracy_drop"])
    assert dense["alt.atheism"]["support"] == dense["sci.space"]["support"] == 50.0

    # the same reports in MLflow, made from the trial's own predictions
    from mlflow import MlflowClient

    client = MlflowClient("sqlite:///presso-runs/mlflow.db")
    experiment = client.get_experiment_by_name("classifier-demo").experiment_id
    (run,) = client.search_runs([experiment], f"tags.`presso.trial_number` = '{number}'")
    (parent,) = client.search_runs([experiment], "tags.`presso.kind` = 'study-run'")

    def artifact(run_id, name):
        return json.loads(Path(client.download_artifacts(run_id, name, str(tmp_path))).read_text())

    assert artifact(run.info.run_id, "classification_report.json") == compressed
    assert artifact(parent.info.run_id, "uncompressed/classification_report.json") == dense
