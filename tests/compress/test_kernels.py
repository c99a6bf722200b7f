"""Packed-format kernels for latency: same outputs as the fake-quantized model, model restored."""

import copy

import pytest
import torch

from presso.compress import compress_
from presso.compress import kernel_view
from presso.models import load_model
from presso.plan import LayerConfig, Plan, QuantConfig, SparsityConfig


@pytest.fixture(scope="module")
def llama():
    return load_model("tiny:llama").model


@pytest.mark.parametrize("bits, group, symmetric", [(4, 32, False), (3, 32, False), (4, 0, True), (8, 32, False)])
def test_kernel_outputs_match_fake_quant(llama, bits, group, symmetric):
    model = copy.deepcopy(llama)
    plan = Plan(layers={"re:.*": LayerConfig(sparsity=SparsityConfig(0.3),
                                             quant=QuantConfig(bits=bits, group_size=group, symmetric=symmetric))})
    result = compress_(model, plan)
    ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.inference_mode():
        fake = model(input_ids=ids).logits
        with kernel_view(model, result) as report:
            real = model(input_ids=ids).logits
    kind = "int4" if bits <= 4 else "int8"
    assert report.counts == {kind: len(result.modules)}
    # bf16 activations (and per-channel int8 re-coding) move logits a little, not more
    assert torch.allclose(real, fake, atol=0.05 * fake.abs().max().item())
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(type(m).__name__ != "KernelLinear" for m in model.modules())


def test_unquantized_sparse_layers_stay_dense_with_a_reason(llama):
    model = copy.deepcopy(llama)
    result = compress_(model, Plan(layers={"re:.*": LayerConfig(sparsity=SparsityConfig(0.5))}))
    with kernel_view(model, result) as report:
        pass
    assert report.counts == {"dense": len(result.modules)}
    assert "unstructured sparsity has no kernel" in report.summary()


def test_latency_kernel_objective_measures_with_kernels(llama):
    from presso.objectives import EvalContext, TrialContext, get_objective, prepare_all
    from presso.objectives import COMPRESSION_KEY

    model = copy.deepcopy(llama)
    result = compress_(model, Plan(layers={"re:.*": LayerConfig(quant=QuantConfig(bits=4, group_size=32))}))
    ctx = EvalContext(task="causal-lm", device="cpu", input_ids=torch.randint(0, 1000, (2, 40)), dense_model=llama)
    objective = get_objective("latency_kernel_ms", context=16, warmup=1, repeats=3)
    prepare_all([objective], ctx)
    trial = TrialContext(number=0, size_bytes=1, dense_bytes=2)
    trial.cache[COMPRESSION_KEY] = result
    value = objective.measure(model, ctx, trial)
    assert value > 0 and objective.last_report.counts == {"int4": len(result.modules)}
    dense = objective.measure(llama, ctx, TrialContext(number=1, size_bytes=1, dense_bytes=2))
    assert dense > 0 and objective.last_report.counts == {}


@pytest.mark.parametrize("method", ["rtn_fmin", "gptq", "imatrix"])
def test_int4_kernel_reads_every_quantizer_layout(llama, method):
    from presso.compress import collect_calibration

    ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    model = copy.deepcopy(llama)
    plan = Plan(layers={"re:.*": LayerConfig(quant=QuantConfig(bits=4, group_size=32, method=method))})
    result = compress_(model, plan, calibration=collect_calibration(llama, ids, hessians=True))
    with torch.inference_mode():
        fake = model(input_ids=ids).logits
        with kernel_view(model, result) as report:
            real = model(input_ids=ids).logits
    assert report.counts == {"int4": len(result.modules)}
    assert torch.allclose(real, fake, atol=0.05 * fake.abs().max().item())
