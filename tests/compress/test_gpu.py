"""A SmolLM2-shaped (random) model end to end on a CUDA device: the engine keeps everything on
the model's device, and a save -> load round trip on the GPU reproduces outputs exactly."""

import copy
import time

import pytest
import torch

from presso.compress import (
    TeacherCache,
    collect_calibration,
    compress_,
    load_compressed,
    save_compressed,
)
from presso.plan import AdapterConfig, LayerConfig, Plan, QuantConfig, RecoveryConfig, SparsityConfig

pytestmark = pytest.mark.gpu


def _smollm2_shaped():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                         tie_word_embeddings=True, rope_theta=100000.0)
    return LlamaForCausalLM(config).to("cuda").eval()


def test_smollm2_shaped_on_cuda(tmp_path):
    dense = _smollm2_shaped()
    ids = torch.randint(0, 49152, (16, 128), device="cuda")
    t0 = time.perf_counter()
    stats = collect_calibration(dense, ids)
    teacher = TeacherCache.build(dense, ids, top_k=64)
    torch.cuda.synchronize()
    once = time.perf_counter() - t0
    layers = {}
    for block in range(30):
        bits, group = [(3, 64), (4, 32), (5, 64)][block % 3]
        layers[f"re:model\\.layers\\.{block}\\..*"] = LayerConfig(
            sparsity=SparsityConfig([0.0, 0.2, 0.5][(block // 3) % 3]) if block % 4 else SparsityConfig(structure="2:4"),
            quant=QuantConfig(bits=bits, group_size=group), adapter=AdapterConfig(rank=8 if block >= 25 else 0))
    plan = Plan(layers=layers, criterion="wanda", recovery=RecoveryConfig(steps=20, lr=1e-3, batch_size=4))
    model = copy.deepcopy(dense)
    result = compress_(model, plan, calibration=stats, teacher=teacher)
    torch.cuda.synchronize()
    report = save_compressed(model, result, None, tmp_path / "out")
    t1 = time.perf_counter()
    loaded = load_compressed(tmp_path / "out", device="cuda").model
    load_s = time.perf_counter() - t1
    timings = {k: round(v, 3) for k, v in result.timings.items()}
    print(f"\n[cuda] once per worker {once:.2f}s; compress_ {timings}; load {load_s:.2f}s; "
          f"predicted {report.predicted_bytes} on disk {report.on_disk_bytes}; "
          f"covered fraction {result.size.covered_fraction:.4f}; "
          f"recovery loss {result.recovery_losses[0]:.4f} -> {result.recovery_losses[-1]:.4f}")
    assert report.on_disk_bytes == report.predicted_bytes
    assert next(iter(result.modules.values())).codes.is_cuda
    probe = ids[:2, :64]
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=probe).logits, model(input_ids=probe).logits)
