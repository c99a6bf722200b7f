"""One Evaluator scores many plans on one working copy: an embedding table a plan quantized
must be restored before the next plan, and the dense model must never change."""

import pytest
import torch

from presso.search import EvalConfig, Evaluator, StudyConfig

WITH_TABLE = {
    "defaults": {"criterion": "wanda", "calibration_samples": 4, "calibration_seq_len": 32},
    "groups": [
        {"name": "embed", "modules": ["model.embed_tokens"], "tie": "group", "bits": [4, 8, 16], "group_size": [32]},
        {"name": "all", "modules": ["re:.*\\.(\\d+)\\..*"], "tie": "block",
         "sparsity": {"low": 0.0, "high": 0.4, "step": 0.2}, "bits": [4, 8, 16], "group_size": [32]},
    ],
}


def _config(tmp_path) -> StudyConfig:
    return StudyConfig(name="ev", model="tiny:llama", space=WITH_TABLE, trials=4, device="cpu",
                       storage=f"sqlite:///{tmp_path}/s.db", tracking_uri=None, eval=EvalConfig(sequences=4, seq_len=32))


def _plan(evaluator, table_bits: int, block_bits: int):
    def ask(name, domain):
        key = name.rsplit("/", 1)[1]
        if key == "bits":
            return table_bits if name.startswith("embed/") else block_bits
        return domain.values[0] if hasattr(domain, "values") else domain.low
    return evaluator.bound.sample(ask, model="tiny:llama")


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory):
    return Evaluator(_config(tmp_path_factory.mktemp("ev")))


def test_the_table_is_a_unit_and_is_restored_between_plans(evaluator, tmp_path):
    assert evaluator.bound.units[0].modules == ("model.embed_tokens",)
    dense = {k: v.clone() for k, v in evaluator.loaded.model.state_dict().items()}
    table_4bit = evaluator.evaluate(_plan(evaluator, 4, 16))
    table_kept = evaluator.evaluate(_plan(evaluator, 16, 16))
    assert table_4bit.values["size_fraction"] < table_kept.values["size_fraction"]
    assert table_4bit.values["ppl_ratio"] != table_kept.values["ppl_ratio"]
    # The table plan did not leak into the next plan: a fresh evaluator measures the same.
    fresh = Evaluator(_config(tmp_path)).evaluate(_plan(evaluator, 16, 16))
    assert fresh.values == table_kept.values
    assert table_kept.values["ppl_ratio"] == pytest.approx(1.0, abs=1e-6)  # nothing compressed
    after = evaluator.loaded.model.state_dict()
    assert all(torch.equal(dense[k], after[k]) for k in dense)


def test_sensitivity_probes_cover_the_table(evaluator):
    from presso.search._warmstart import sensitivity_plans

    plans, sensitivity = sensitivity_plans(evaluator, 3)
    assert "embed/all/quant" in sensitivity and "embed/all/prune" not in sensitivity
    assert plans and all("embed/all/bits" in params for params, _ in plans)
