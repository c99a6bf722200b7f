"""The objectives on a CUDA device (marker ``gpu``; skipped without one)."""

from __future__ import annotations

import copy

import pytest
import torch

from presso.objectives import TrialContext, measure_all

from .conftest import perturb_

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

ALL = {
    "causal-lm": ["perplexity", "ppl_ratio", "kl_divergence", "embedding_cosine", "probe_accuracy", "latency_ms", "size_fraction"],
    "encoder": ["embedding_cosine", "embedding_cosine_loss", "probe_accuracy", "latency_ms", "size_bytes"],
}


@pytest.mark.parametrize("task, model_name", [("causal-lm", "llama"), ("encoder", "bert")])
def test_cuda_matches_cpu_and_self_values_hold(task, model_name, request, make_ctx, monkeypatch):
    cpu_model = request.getfixturevalue(model_name)
    names = ALL[task]
    cpu_ctx, cpu_objectives = make_ctx(task, cpu_model, names)
    cpu_values = measure_all(cpu_objectives, cpu_model, cpu_ctx, TrialContext(size_bytes=1, dense_bytes=4))

    gpu_model = copy.deepcopy(cpu_model).to("cuda")
    ctx, objectives = make_ctx(task, gpu_model, names, device="cuda")
    syncs = []
    original_sync = torch.cuda.synchronize
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: syncs.append(1) or original_sync(*a))
    values = measure_all(objectives, gpu_model, ctx, TrialContext(size_bytes=1, dense_bytes=4))

    assert values["embedding_cosine"] == pytest.approx(1.0, abs=1e-12)
    if task == "causal-lm":
        assert values["ppl_ratio"] == pytest.approx(1.0, abs=1e-9)
        assert values["kl_divergence"] == pytest.approx(0.0, abs=1e-9)
        assert values["perplexity"] == pytest.approx(cpu_values["perplexity"], rel=1e-3)
    assert values["probe_accuracy"] == cpu_values["probe_accuracy"]
    assert values["latency_ms"] > 0.0 and len(syncs) >= 8  # one after warmup + one per timed pass

    damaged = perturb_(copy.deepcopy(cpu_model), scale=1.0).to("cuda")
    worse = measure_all(objectives, damaged, ctx, TrialContext(size_bytes=1, dense_bytes=4))
    assert worse["embedding_cosine"] < 1.0
    if task == "causal-lm":
        assert worse["ppl_ratio"] > 1.0 and worse["kl_divergence"] > 0.0
