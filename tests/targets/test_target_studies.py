"""Integration: studies in a runtime's formats on the real models, then export -> apply -> the
runtime loads the file and reproduces the trial (llama.cpp for gguf, transformers for
compressed-tensors), and the file has the trial's size_bytes to the byte."""

import json
import re

import pytest
import yaml

from presso.cli import main

pytestmark = pytest.mark.slow


def _study(tmp_path, **settings):
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({"trials": 3, "device": "cpu", "tracking_uri": None, "warm_start": False,
                                     "eval": {"sequences": 4, "seq_len": 64}, **settings}))
    return study


def _export_apply(capsys, study, name, out, *extra):
    assert main(["run", str(study), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["pareto", "--study", name, "--format", "json"]) == 0
    front = json.loads(capsys.readouterr().out)
    assert main(["export", "--study", name, "--pick", "min size_fraction", "-o", "plan.yaml"]) == 0
    number = int(capsys.readouterr().out.split("exported trial ")[1].split()[0])
    recorded = next(row for row in front if row["number"] == number)
    assert main(["apply", "plan.yaml", "--out", out, "--study-file", str(study), *extra]) == 0
    printed = capsys.readouterr().out
    # "saved OUT (target): <what it counts>: 1,234 bytes = 0.12 of ...": the file's bytes come first
    on_disk = int(re.search(r": ([\d,]+) bytes = ", printed).group(1).replace(",", ""))
    assert on_disk == recorded["metrics"]["size_bytes"]
    assert main(["evaluate", out, "--study-file", str(study), "--format", "json"]) == 0
    return recorded, json.loads(capsys.readouterr().out)


def test_gguf_study_on_smollm2_reproduces_in_llama_cpp(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    study = _study(tmp_path, name="smol-gguf", model="builtin:smollm2-135m", target="gguf",
                   space="builtin:smollm2-135m-gguf", objectives=["ppl_ratio", "size_fraction"])
    recorded, scored = _export_apply(capsys, study, "smol-gguf", "small.gguf", "--target", "gguf")
    assert (tmp_path / "small.gguf").stat().st_size == recorded["metrics"]["size_bytes"]
    assert scored["size_fraction"] == pytest.approx(recorded["values"]["size_fraction"], rel=1e-12)
    # The trial computes with llama.cpp's 8-bit activations (GGUFTarget.emulate): this seed's
    # smallest plan scored 1.10945 in the trial and 1.11606 in llama.cpp (0.6%; 1.7% before the
    # emulation). Issue 11 asks for 1%.
    assert scored["ppl_ratio"] == pytest.approx(recorded["values"]["ppl_ratio"], rel=0.01)
    # Each trial says which ggml kernel ran each weight: 30 blocks x 7 Linear, the table, the tied head.
    import optuna

    trials = optuna.load_study(study_name="smol-gguf", storage="sqlite:///presso-runs/studies.db").get_trials()
    for trial in trials:
        kernels = trial.user_attrs["kernels"]
        assert sum(kernels.values()) == 30 * 7 + 2 and all(k.startswith("CPU") for k in kernels), kernels


def test_gguf_study_on_minilm_reproduces_in_llama_cpp_embeddings(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    study = _study(tmp_path, name="minilm-gguf", model="builtin:minilm-l6", target="gguf",
                   space="builtin:minilm-l6-gguf", objectives=["embedding_cosine", "size_fraction"])
    recorded, scored = _export_apply(capsys, study, "minilm-gguf", "small.gguf", "--target", "gguf")
    assert (tmp_path / "small.gguf").stat().st_size == recorded["metrics"]["size_bytes"]
    assert scored["size_fraction"] == pytest.approx(recorded["values"]["size_fraction"], rel=1e-12)
    print(f"minilm gguf: size_bytes {recorded['metrics']['size_bytes']:.0f} = file; embedding_cosine trial "
          f"{recorded['values']['embedding_cosine']:.6f}, llama.cpp {scored['embedding_cosine']:.6f}")
    # llama.cpp's BERT: 8-bit activations in quantized matmuls and a tanh GELU; within 1%, not to the bit.
    assert scored["embedding_cosine"] == pytest.approx(recorded["values"]["embedding_cosine"], rel=0.01)


@pytest.mark.parametrize("model,space,objective", [
    ("builtin:minilm-l6", "builtin:minilm-l6-ct", "embedding_cosine"),
    ("builtin:smollm2-135m", "builtin:smollm2-135m-ct", "ppl_ratio"),
])
def test_compressed_tensors_study_reproduces_in_transformers(tmp_path, monkeypatch, capsys, model, space, objective):
    monkeypatch.chdir(tmp_path)
    study = _study(tmp_path, name="ct", model=model, target="compressed-tensors", space=space,
                   objectives=[objective, "size_fraction"])
    recorded, scored = _export_apply(capsys, study, "ct", "small")
    # transformers loads the folder through its compressed-tensors support: the same weights.
    assert scored[objective] == pytest.approx(recorded["values"][objective], rel=1e-5)
    assert scored["size_fraction"] == pytest.approx(recorded["values"]["size_fraction"], rel=1e-12)
