"""compressed-tensors on the real SmolLM2-135M and MiniLM-L6: plain transformers loads the folder and
its outputs match Presso's fake-quantized model (max abs difference printed; run with -s)."""

import pytest
import torch

from presso import models
from presso.compress import compress_
from presso.plan import LayerConfig, Plan, QuantConfig
from presso.targets import get_target

pytestmark = pytest.mark.slow


def _q(bits, group):
    return LayerConfig(quant=QuantConfig(bits=bits, group_size=group, symmetric=True))


def _round_trip(loaded, plan, tmp_path):
    target = get_target("compressed-tensors")
    model = loaded.model
    target.check_plan(model, plan)
    result = compress_(model, plan)
    written = target.write(model, result, loaded.tokenizer, tmp_path / "ct")
    assert written.on_disk_bytes == written.predicted_bytes
    ids = loaded.tokenizer(["The quick brown fox jumps over the lazy dog near the river bank."],
                           return_tensors="pt")["input_ids"]
    return model, target.load(written.path), ids


def test_smollm2_logits_match(tmp_path):
    plan = Plan(layers={"re:.*self_attn\\.[qkv]_proj": _q(4, 64), "re:.*o_proj": _q(8, 0),
                        "re:.*mlp\\.(gate|up)_proj": _q(4, 32), "re:.*down_proj": _q(4, 128)})
    model, reloaded, ids = _round_trip(models.load_model("builtin:smollm2-135m"), plan, tmp_path)
    with torch.no_grad():
        want, got = model(ids).logits, reloaded(ids).logits
    diff = (got - want).abs().max().item()
    print(f"\nSmolLM2-135M compressed-tensors logits: max abs diff {diff:.3g} (logit range {want.abs().max().item():.3g})")
    assert diff <= 1e-3, diff


def test_minilm_embeddings_match(tmp_path):
    plan = Plan(layers={"re:.*attention.*": _q(8, 128), "re:.*(intermediate|output)\\.dense": _q(4, 32)})
    model, reloaded, ids = _round_trip(models.load_model("builtin:minilm-l6"), plan, tmp_path)
    with torch.no_grad():
        want, got = model(ids).last_hidden_state, reloaded(ids).last_hidden_state
    diff = (got - want).abs().max().item()
    print(f"\nMiniLM-L6 compressed-tensors last_hidden_state: max abs diff {diff:.3g}")
    assert diff <= 1e-4, diff
