"""The presso target, and that a plain transformers from_pretrained never loads its folder wrong."""

import pytest
import torch
import transformers

from presso.compress import compress_, load_compressed
from presso.plan import LayerConfig, Plan, QuantConfig, SparsityConfig
from presso.targets import Target, get_target

from .conftest import tiny_bert, tiny_llama

PLAN = Plan(layers={"re:.*": LayerConfig(sparsity=SparsityConfig(0.5), quant=QuantConfig(bits=3, group_size=32))})


def test_presso_target_round_trip_exact(tmp_path):
    model = tiny_llama()
    target = get_target("presso")
    target.check_plan(model, PLAN)
    result = compress_(model, PLAN)
    written = target.write(model, result, None, tmp_path / "p")
    assert written.on_disk_bytes == written.predicted_bytes == target.predict_bytes(model, result)
    assert written.on_disk_bytes == (tmp_path / "p" / "model.safetensors").stat().st_size
    reloaded = target.load(written.path).model
    ids = torch.randint(0, 256, (1, 16))
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, model(ids).logits)


@pytest.mark.parametrize(("build", "auto"), [(tiny_llama, transformers.AutoModelForCausalLM),
                                             (tiny_bert, transformers.AutoModel)])
def test_plain_from_pretrained_fails_with_the_load_compressed_hint(tmp_path, build, auto):
    model = build()
    result = compress_(model, PLAN)
    get_target("presso").write(model, result, None, tmp_path / "p")
    with pytest.raises(ValueError, match=r"presso\.compress\.load_compressed\(DIR\)"):
        auto.from_pretrained(str(tmp_path / "p"))
    load_compressed(tmp_path / "p")  # Presso's own loader is unaffected


@pytest.mark.parametrize("name", ["presso", "compressed-tensors"])
def test_targets_implement_the_protocol(name):
    target = get_target(name)
    assert isinstance(target, Target) and target.name == name
