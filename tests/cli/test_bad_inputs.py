"""The catalogue of bad inputs: each ends in exit code 2 and one line on stderr that names
what is wrong, the value and what is allowed; never a traceback (without --debug)."""

import pytest
import yaml

from presso.cli import main

TINY = {"name": "t", "model": "tiny:llama", "space": "builtin:tiny", "trials": 2, "device": "cpu",
        "tracking_uri": None, "eval": {"sequences": 2, "seq_len": 16}}
GOOD_GROUP = {"name": "all", "modules": ["re:.*"], "bits": [4], "group_size": [32]}


def study_file(tmp_path, text=None, **changes):
    path = tmp_path / "study.yaml"
    path.write_text(text if text is not None else yaml.safe_dump({**TINY, **changes}))
    return str(path)


def space_study(tmp_path, **group):
    return study_file(tmp_path, space={"groups": [{**GOOD_GROUP, **group}]})


def plan_file(tmp_path, layers, **extra):
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump({"model": "tiny:llama", "layers": layers, **extra}))
    return str(path)


# (id, argv builder, fragments the one-line message must contain)
CASES = [
    ("malformed-yaml", lambda p: ["run", study_file(p, text="name: [unclosed\n")], ["not valid YAML"]),
    ("unknown-study-key", lambda p: ["run", study_file(p, trails=3)], ["unknown key 'trails'", "did you mean 'trials'"]),
    ("unknown-eval-key", lambda p: ["run", study_file(p, eval={"sequence": 2})], ["study.eval: unknown key 'sequence'"]),
    ("unknown-group-key", lambda p: ["run", space_study(p, bitz=[4])], ["unknown key 'bitz'", "did you mean 'bits'"]),
    ("pattern-matches-nothing", lambda p: ["run", space_study(p, modules=["encoder.*"])],
     ["matches no module", "model.layers.0.self_attn.q_proj"]),
    ("reversed-range", lambda p: ["run", space_study(p, sparsity={"low": 0.6, "high": 0.2})], ["low <= high", "low=0.6"]),
    ("empty-choice", lambda p: ["run", space_study(p, bits=[])], ["empty list"]),
    ("sparsity-one", lambda p: ["run", space_study(p, sparsity=1.0)], ["sparsity.amount: got 1.0", "[0, 1)"]),
    ("sparsity-negative", lambda p: ["run", space_study(p, sparsity=[-0.1, 0.2])], ["sparsity.amount: got -0.1"]),
    ("unsupported-bits", lambda p: ["run", space_study(p, bits=[4, 12])], ["quant.bits: got 12", "[2, 3, 4, 5, 6, 7, 8, 16]"]),
    ("bad-tie", lambda p: ["run", space_study(p, tie="layer")], ["tie: got 'layer'", "'module', 'block', 'group'"]),
    ("bad-structure", lambda p: ["run", space_study(p, structure=["3:2"])], ["0 < N < M", "'3:2'"]),
    ("unknown-objective", lambda p: ["run", study_file(p, objectives=["perplexty", "size_fraction"])],
     ["perplexty", "perplexity"]),
    ("objective-wrong-task", lambda p: ["run", study_file(p, model="tiny:bert", objectives=["perplexity"])], ["perplexity", "encoder"]),
    ("unknown-sampler", lambda p: ["run", study_file(p), "--sampler", "cmaes"], ["sampler: got 'cmaes'", "nsga2"]),
    ("constraint-on-missing-objective", lambda p: ["run", study_file(p, constraints=["latency_ms <= 5"])], ["latency_ms"]),
    ("constraint-syntax", lambda p: ["run", study_file(p, constraints=["ppl_ratio < 1.1"])], ["ppl_ratio < 1.1", "<="]),
    ("zero-trials", lambda p: ["run", study_file(p, trials=0)], ["study.trials: got 0", ">= 1"]),
    ("model-does-not-resolve", lambda p: ["run", study_file(p, model="builtin:smollm")], ["builtin:smollm", "builtin:smollm2-135m"]),
    ("model-folder-missing", lambda p: ["run", study_file(p, model="./no-such-model")], ["./no-such-model"]),
    ("model-folder-without-config", lambda p: ["run", study_file(p, model=str(p))], ["has no config.json"]),
    ("missing-text-file", lambda p: ["run", study_file(p, eval={"text": str(p / "none.txt")})], ["none.txt", "does not exist"]),
    ("empty-text-file", lambda p: (p.joinpath("empty.txt").write_text("\n\n"), ["run", study_file(p, eval={"text": str(p / "empty.txt")})])[1],
     ["holds no text"]),
    ("text-too-short", lambda p: (p.joinpath("short.txt").write_text("a few words\n\nand more\n"),
                                  ["run", study_file(p, eval={"text": str(p / "short.txt")})])[1], ["tokens available", "requested"]),
    ("malformed-storage-url", lambda p: ["run", study_file(p), "--storage", "presso.db"], ["storage: got 'presso.db'", "sqlite:///"]),
    ("unreachable-storage", lambda p: ["status", "--study", "x", "--storage", "postgresql+psycopg://bob:hunter2@127.0.0.1:9/db"],
     ["cannot open", "bob:***@"]),
    ("no-gpu", lambda p: ["run", study_file(p, device="cuda")], ["device: got 'cuda'", "no CUDA GPU"]),
    ("unknown-study", lambda p: ["pareto", "--study", "nope", "--storage", f"sqlite:///{p}/s.db"], ["no study named 'nope'"]),
    ("plan-unknown-key", lambda p: ["apply", plan_file(p, {"re:.*": {"quant": {"bits": 4, "group": 32}}}), "--out", str(p / "o")],
     ["unknown key 'group'", "group_size"]),
    ("plan-bad-type", lambda p: (p.joinpath("evil.yaml").write_text("_type: subprocess.Popen\n_version: 1\n_data: {}\n"),
                                 ["apply", str(p / "evil.yaml"), "--out", str(p / "o")])[1], ["plan._type: got 'subprocess.Popen'"]),
    ("group-size-does-not-divide", lambda p: ["apply", plan_file(p, {"re:.*": {"quant": {"bits": 4, "group_size": 48}}}), "--out", str(p / "o")],
     ["group_size", "48"]),
    ("n-m-does-not-fit", lambda p: ["apply", plan_file(p, {"re:.*": {"sparsity": {"structure": "2:7"}}}), "--out", str(p / "o")],
     ["2:7"]),
    ("adapter-rank-too-large", lambda p: ["apply", plan_file(p, {"re:.*": {"adapter": {"rank": 4096}}}), "--out", str(p / "o")],
     ["rank", "4096"]),
    ("plan-names-missing-module", lambda p: ["apply", plan_file(p, {"model.layers.9.mlp.up_proj": {"quant": {"bits": 4}}}), "--out", str(p / "o")],
     ["model.layers.9.mlp.up_proj", "not in the model"]),
    ("evaluate-not-a-model-dir", lambda p: ["evaluate", str(p)], ["manifest"]),
]


@pytest.mark.parametrize("case_id, build, fragments", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_clear_line(tmp_path, monkeypatch, capsys, case_id, build, fragments):
    monkeypatch.chdir(tmp_path)
    argv = build(tmp_path)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_debug_flag_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from presso.errors import PressoError

    with pytest.raises(PressoError):
        main(["--debug", "run", study_file(tmp_path, trials=0)])


def test_catalogue_is_at_least_thirty():
    assert len(CASES) >= 30


def test_remote_code_stays_off_unless_asked(tmp_path, monkeypatch, capsys):
    """A model folder whose config asks for its own Python code is refused without the flag."""
    import json

    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "remote-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "evil", "architectures": ["EvilForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"},
    }))
    marker = tmp_path / "ran.txt"
    (folder / "configuration_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    code = main(["run", study_file(tmp_path, model=str(folder))])
    err = capsys.readouterr().err
    assert code == 2
    assert "contains custom code" in err and "Traceback" not in err
    assert not marker.exists()


@pytest.mark.parametrize("pick, fragment", [("smallest size", "pick rule"), ("min sise_fraction", "did you mean")])
def test_a_malformed_pick_rule_is_rejected_before_the_store_is_opened(tmp_path, capsys, pick, fragment):
    """A large study takes time to read: the rule is checked first, so nothing is opened (the
    SQLite file and its folder are never created) and the answer is immediate."""
    store = tmp_path / "never" / "studies.db"
    code = main(["export", "--study", "s", "--storage", f"sqlite:///{store}", "--pick", pick, "-o", str(tmp_path / "p.yaml")])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and "no study named" not in err
    assert not store.parent.exists()
