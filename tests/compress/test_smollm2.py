"""Integration on the real SmolLM2-135M (slow: about a minute on 2 CPU cores).

Caveat: SmolLM2 ships as GGUF Q4_1, so its "dense" fp32 weights already lie on a 4-bit grid.
"""

import copy

import pytest
import torch

from presso.compress import (
    TeacherCache,
    collect_calibration,
    compress_,
    compressible_modules,
    load_compressed,
    save_compressed,
)
from presso.plan import AdapterConfig, LayerConfig, Plan, QuantConfig, RecoveryConfig, SparsityConfig

pytestmark = pytest.mark.slow


def _plan() -> Plan:
    """Different sparsity and bits per block; bits average exactly 4 over the 30 blocks."""
    layers = {}
    for block in range(30):
        bits, group = [(3, 64), (4, 32), (5, 64)][block % 3]
        sparsity = [0.0, 0.2, 0.3][(block // 3) % 3]
        adapter = AdapterConfig(rank=4) if block in (28, 29) else AdapterConfig()
        layers[f"re:model\\.layers\\.{block}\\..*"] = LayerConfig(
            sparsity=SparsityConfig(sparsity), quant=QuantConfig(bits=bits, group_size=group), adapter=adapter
        )
    return Plan(layers=layers, model="builtin:smollm2-135m", criterion="wanda",
                recovery=RecoveryConfig(steps=2, lr=1e-4, batch_size=2))


def test_smollm2_non_uniform_plan_save_reload(tmp_path):
    from presso import data, models
    loaded = models.load_model("builtin:smollm2-135m")
    dense, tokenizer = loaded.model, loaded.tokenizer
    assert len(compressible_modules(dense)) == 210
    calibration_docs, _ = data.split_documents(data.load_documents("builtin:lee"))
    ids = data.token_batches(tokenizer, calibration_docs, 8, 64)
    stats = collect_calibration(dense, ids)  # once per worker
    teacher = TeacherCache.build(dense, ids[:4], top_k=32)  # once per worker

    model = copy.deepcopy(dense)  # per trial
    result = compress_(model, _plan(), calibration=stats, teacher=teacher)
    size = result.size
    assert len(result.modules) == 210 and len(result.recovery_losses) == 2
    # covered layers: at most 15% of their fp32 bytes (codes, fp16 scales, zero points, masks, adapters)
    assert size.covered_fraction <= 0.15, size.covered_fraction

    report = save_compressed(model, result, tokenizer, tmp_path / "smollm2")
    assert abs(report.on_disk_bytes - report.predicted_bytes) <= 0.01 * report.predicted_bytes
    reloaded, _, plan = load_compressed(tmp_path / "smollm2")
    assert plan == result.plan
    probe = ids[:2, :32]
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=probe).logits, model(input_ids=probe).logits)


def test_smollm2_tied_embedding_table_at_8_bits(tmp_path):
    """The tied embedding (21% of the fp32 bytes) at 8 bits halves the size of a 4-bit-blocks
    plan and costs next to nothing; the output head runs the same quantized table."""
    import math

    from presso import data, models
    loaded = models.load_model("builtin:smollm2-135m")
    dense = loaded.model
    _, eval_docs = data.split_documents(data.load_documents("builtin:lee"))
    ids = data.token_batches(loaded.tokenizer, eval_docs, 4, 128)

    def perplexity(model):
        with torch.no_grad():
            return math.exp(float(model(input_ids=ids, labels=ids).loss))

    blocks = {"re:.*": LayerConfig(quant=QuantConfig(bits=4, group_size=32))}
    blocks_only = copy.deepcopy(dense)
    r_blocks = compress_(blocks_only, Plan(layers=blocks))
    with_table = copy.deepcopy(dense)
    r_table = compress_(with_table, Plan(layers={"model.embed_tokens": LayerConfig(quant=QuantConfig(bits=8)), **blocks}))
    assert with_table.lm_head.weight is with_table.model.embed_tokens.weight
    assert r_table.size.size_fraction < 0.55 * r_blocks.size.size_fraction  # measured 0.169 vs 0.325
    assert perplexity(with_table) <= 1.01 * perplexity(blocks_only)
    report = save_compressed(with_table, r_table, loaded.tokenizer, tmp_path / "m")
    assert abs(report.on_disk_bytes - report.predicted_bytes) <= 0.01 * report.predicted_bytes
    reloaded = load_compressed(tmp_path / "m").model
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids[:1, :32]).logits, with_table(input_ids=ids[:1, :32]).logits)
