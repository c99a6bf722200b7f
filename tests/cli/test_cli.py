"""Every CLI command on the 2-layer tiny model, in a temporary working directory."""

import json
import textwrap

import pytest
import yaml

from presso.cli import main
from presso.plan import load_plan

STUDY = {
    "name": "tiny",
    "model": "tiny:llama",
    "space": "builtin:tiny",
    "objectives": ["ppl_ratio", "size_fraction"],
    "trials": 5,
    "device": "cpu",
    "tracking_uri": None,
    "eval": {"sequences": 4, "seq_len": 32},
}


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_study(path, **changes):
    data = {**STUDY, **changes}
    path.write_text(yaml.safe_dump(data))
    return str(path)


def run_cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture()
def finished_study(workdir, capsys):
    study = write_study(workdir / "study.yaml")
    code, out, err = run_cli(capsys, "run", study, "--no-progress")
    assert code == 0, err
    return study


def test_run_status_pareto(finished_study, capsys):
    code, out, _ = run_cli(capsys, "status", "--study", "tiny")
    assert code == 0
    assert "complete 5" in out and "Pareto front" in out
    code, out, _ = run_cli(capsys, "pareto", "--study", "tiny", "--format", "json")
    front = json.loads(out)
    assert front and {"number", "values", "plan"} <= set(front[0])
    assert set(front[0]["values"]) == {"ppl_ratio", "size_fraction"}
    assert front[0]["plan"]["_type"] == "Plan"
    code, out, _ = run_cli(capsys, "pareto", "--study", "tiny", "--format", "csv")
    lines = out.strip().splitlines()
    assert lines[0].startswith("number,ppl_ratio,size_fraction") and len(lines) == len(front) + 1


def test_rerun_is_a_no_op_at_budget(finished_study, capsys):
    code, out, _ = run_cli(capsys, "run", finished_study, "--no-progress")
    assert code == 0 and "5/5 trials" in out


def test_export_apply_evaluate_reproduce_the_trial(finished_study, workdir, capsys):
    code, out, err = run_cli(capsys, "export", "--study", "tiny", "--pick", "min size_fraction", "-o", "plan.yaml")
    assert code == 0, err
    number = int(out.split("exported trial ")[1].split()[0])
    front = json.loads(run_cli(capsys, "pareto", "--study", "tiny", "--format", "json")[1])
    recorded = next(r for r in front if r["number"] == number)
    assert load_plan("plan.yaml").model == "tiny:llama"

    code, out, err = run_cli(capsys, "apply", "plan.yaml", "--out", "model-out", "--study-file", finished_study)
    assert code == 0, err
    # one size number: the apply line counts what the trial's size_bytes / dense_bytes count
    size, dense = int(recorded["metrics"]["size_bytes"]), int(recorded["metrics"]["dense_bytes"])
    said = (f"model.safetensors (weights and header): {size:,} bytes = {recorded['values']['size_fraction']:.5g} "
            f"of the dense fp32 weights (all tensors of the uncompressed model, tied ones once): {dense:,} bytes")
    assert said in out and f"(predicted {size:,})" in out and "other files (tokenizer, config)" in out
    assert (workdir / "model-out" / "model.safetensors").stat().st_size == size

    code, out, err = run_cli(capsys, "evaluate", "model-out", "--study-file", finished_study, "--format", "json")
    assert code == 0, err
    values = json.loads(out)
    assert values == recorded["values"]  # exactly: same weights, same data, same order
    assert f"size: {said}" in run_cli(capsys, "evaluate", "model-out", "--study-file", finished_study)[1]
    status = run_cli(capsys, "status", "--study", "tiny")[1]
    assert f"size_fraction = size_bytes / {dense:,} bytes, the dense fp32 weights" in status


def test_export_refuses_overwrite_and_unsatisfiable_rule(finished_study, capsys):
    assert run_cli(capsys, "export", "--study", "tiny", "--pick", "min size_fraction", "-o", "p.yaml")[0] == 0
    code, _, err = run_cli(capsys, "export", "--study", "tiny", "--pick", "min size_fraction", "-o", "p.yaml")
    assert code == 2 and "already exists; pass --force" in err
    code, _, err = run_cli(capsys, "export", "--study", "tiny", "--pick", "min size_fraction where ppl_ratio <= 0.5", "-o", "q.yaml")
    assert code == 2 and "closest: trial" in err
    code, _, err = run_cli(capsys, "export", "--study", "tiny", "--pick", "smallest size", "-o", "q.yaml")
    assert code == 2 and "error: pick rule" in err.lower() and "Traceback" not in err


def test_failed_trials_are_recorded_and_the_study_goes_on(workdir, capsys):
    space = {
        "defaults": {"criterion": "magnitude"},
        "groups": [{"name": "all", "modules": ["re:.*"], "tie": "block", "bits": [4], "group_size": [32, 48]}],
    }
    study = write_study(workdir / "bad.yaml", name="bad", space=space, trials=6, sampler="random")
    code, out, err = run_cli(capsys, "run", study, "--no-progress")
    assert code == 0, err
    counts = run_cli(capsys, "status", "--study", "bad")[1]
    assert "fail" in counts and "complete" in counts
    from presso.search import load_existing_study, trial_rows

    rows = trial_rows(load_existing_study("bad", "sqlite:///presso-runs/studies.db"))
    failed = [r for r in rows if r.state == "FAIL"]
    assert failed and all("group_size" in r.failure and "48" in r.failure for r in failed)
    assert sum(r.counted for r in rows) == 6


def test_resume_stops_exactly_at_budget(workdir, capsys):
    from presso.search import load_study_file, run_study, trial_rows, load_existing_study

    config = load_study_file(write_study(workdir / "s.yaml", name="resume", trials=5))
    first = run_study(config, progress=False, max_trials_here=2)
    assert first.counted == 2
    code, out, _ = run_cli(capsys, "run", str(workdir / "s.yaml"), "--no-progress", "--trials", "5")
    assert "5/5 trials" in out
    rows = trial_rows(load_existing_study("resume", config.storage))
    assert sum(r.counted for r in rows) == 5 and len(rows) == 5


def test_incompatible_space_under_same_name_is_refused(finished_study, workdir, capsys):
    other = write_study(workdir / "other.yaml", space={"groups": [{"modules": ["re:.*"], "bits": [8]}]})
    code, _, err = run_cli(capsys, "run", other, "--no-progress")
    assert code == 2 and "already exists with another search space" in err


def test_models_lists_builtins(capsys):
    code, out, _ = run_cli(capsys, "models")
    assert code == 0
    for ref in ("builtin:smollm2-135m", "builtin:minilm-l6", "tiny:llama"):
        assert ref in out


def test_unknown_study_and_bad_storage(workdir, capsys):
    code, _, err = run_cli(capsys, "status", "--study", "nope")
    assert code == 2 and "no study named 'nope'" in err
    code, _, err = run_cli(capsys, "status", "--study", "x", "--storage", "postgresql+psycopg://u:secret@127.0.0.1:1/db")
    assert code == 2 and "secret" not in err and "u:***@" in err


def test_constraints_keep_violators_off_the_front(workdir, capsys):
    from presso.search import load_existing_study, pareto_rows, trial_rows

    study = write_study(workdir / "c.yaml", name="constrained", trials=6, sampler="random",
                        constraints=["size_fraction <= 0.975"])
    code, _, err = run_cli(capsys, "run", study, "--no-progress")
    assert code == 0, err
    loaded = load_existing_study("constrained", "sqlite:///presso-runs/studies.db")
    rows = [r for r in trial_rows(loaded) if r.state == "COMPLETE"]
    assert all(r.feasible == (r.values["size_fraction"] <= 0.975) for r in rows)
    assert any(not r.feasible for r in rows) and any(r.feasible for r in rows)
    assert all(r.feasible for r in pareto_rows(loaded))
