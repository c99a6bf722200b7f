"""``vllm_decode_ms`` is offered only where vLLM and a CUDA GPU are; elsewhere it says why."""

from __future__ import annotations

import copy

import pytest

from presso.errors import PressoError
from presso.objectives import TrialContext, get_objective
from presso.objectives import COMPRESSION_KEY
from presso.objectives._vllm_latency import vllm_unavailable


@pytest.mark.skipif(vllm_unavailable() is None, reason="vLLM and a GPU are present: the gpu test runs instead")
def test_refused_with_the_reason_where_vllm_cannot_run(make_ctx, llama):
    with pytest.raises(PressoError) as err:
        make_ctx("causal-lm", llama, ["vllm_decode_ms"])
    message = str(err.value)
    assert "not offered on this worker" in message and vllm_unavailable() in message
    assert "llama_decode_ms" in message  # says what is offered instead


def test_bad_options_name_the_field():
    with pytest.raises(PressoError, match=r"vllm_decode_ms.decode_tokens: got 0"):
        get_objective("vllm_decode_ms", decode_tokens=0)


@pytest.mark.gpu
@pytest.mark.skipif(vllm_unavailable() is not None, reason=f"vLLM cannot run here: {vllm_unavailable()}")
def test_decode_ms_is_measured_in_vllm(make_ctx, llama):
    from presso.compress import compress_
    from presso.plan import LayerConfig, Plan, QuantConfig

    model = copy.deepcopy(llama).half().cuda()
    result = compress_(model, Plan(layers={"re:.*mlp.*": LayerConfig(quant=QuantConfig(bits=4, group_size=32, symmetric=True))}))
    ctx, [objective] = make_ctx("causal-lm", llama, ["vllm_decode_ms"])
    trial = TrialContext(size_bytes=1, dense_bytes=2)
    trial.cache[COMPRESSION_KEY] = result
    assert 0 < objective.compute(model, ctx, trial) < 1000
