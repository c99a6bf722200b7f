"""Embedding tables: compressed only when named exactly, quantization only, stored once when tied."""

import pytest
import torch
from safetensors import safe_open

from presso.compress import compress_, embedding_modules, load_compressed, save_compressed, target_modules
from presso.compress import kernel_view
from presso.errors import PressoError
from presso.plan import AdapterConfig, LayerConfig, Plan, QuantConfig, SparsityConfig
from presso.spaces import SearchSpace

from .conftest import outputs, tiny_bert, tiny_llama

EMBED_4BIT = LayerConfig(quant=QuantConfig(bits=4, group_size=32))


def test_target_modules_list_embeddings_first():
    names = list(target_modules(tiny_bert()))
    assert names[:3] == ["embeddings.word_embeddings", "embeddings.position_embeddings",
                         "embeddings.token_type_embeddings"]
    assert all(n.startswith("encoder.layer.") for n in names[3:])


def test_catch_all_pattern_leaves_the_embedding_alone(llama):
    before = llama.model.embed_tokens.weight.detach().clone()
    result = compress_(llama, Plan(layers={"re:.*": EMBED_4BIT}))
    assert "model.embed_tokens" not in result.modules
    assert torch.equal(llama.model.embed_tokens.weight, before)


def test_tied_embedding_is_quantized_and_stored_once(llama, ids, tmp_path):
    assert llama.lm_head.weight is llama.model.embed_tokens.weight
    dense_only_layers = compress_(tiny_llama(), Plan(layers={"re:.*": EMBED_4BIT}))
    result = compress_(llama, Plan(layers={"model.embed_tokens": EMBED_4BIT, "re:.*": EMBED_4BIT}))
    rec = result.modules["model.embed_tokens"]
    assert (rec.bits, rec.group_size, rec.shape) == (4, 32, (256, 64))
    assert list(result.modules)[0] == "model.embed_tokens"
    # The output head shares the table, so it runs the quantized rows too.
    assert llama.lm_head.weight is llama.model.embed_tokens.weight
    assert result.size.tensor_bytes < dense_only_layers.size.tensor_bytes
    report = save_compressed(llama, result, None, tmp_path / "out")
    assert report.on_disk_bytes == report.predicted_bytes
    with safe_open(str(tmp_path / "out" / "model.safetensors"), framework="pt") as handle:
        keys = set(handle.keys())
    assert "model.embed_tokens.weight.codes" in keys
    assert not any(k.startswith("lm_head") for k in keys)
    loaded = load_compressed(tmp_path / "out").model
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    assert torch.equal(outputs(loaded, ids), outputs(llama, ids))


def test_bert_word_embeddings_only(bert, ids, tmp_path):
    position = bert.embeddings.position_embeddings.weight.detach().clone()
    result = compress_(bert, Plan(layers={"embeddings.word_embeddings": LayerConfig(quant=QuantConfig(bits=8))}))
    assert list(result.modules) == ["embeddings.word_embeddings"]
    assert torch.equal(bert.embeddings.position_embeddings.weight, position)
    save_compressed(bert, result, None, tmp_path / "out")
    assert torch.equal(outputs(load_compressed(tmp_path / "out").model, ids), outputs(bert, ids))


@pytest.mark.parametrize("config, field", [
    (LayerConfig(sparsity=SparsityConfig(0.5)), "sparsity"),
    (LayerConfig(sparsity=SparsityConfig(structure="2:4")), "sparsity"),
    (LayerConfig(quant=QuantConfig(bits=8), adapter=AdapterConfig(rank=4)), "adapter.rank"),
])
def test_embedding_refuses_pruning_and_adapters(llama, config, field):
    with pytest.raises(PressoError, match=rf"plan\.layers\['model\.embed_tokens'\]\.{field}: got .*allowed"):
        compress_(llama, Plan(layers={"model.embed_tokens": config}))


def test_embedding_group_size_must_divide_the_width(llama):
    with pytest.raises(PressoError, match=r"embed_tokens'\]\.quant\.group_size: got 48 for in_features=64"):
        compress_(llama, Plan(layers={"model.embed_tokens": LayerConfig(quant=QuantConfig(bits=4, group_size=48))}))


def test_kernel_view_leaves_the_lookup_dense(llama):
    result = compress_(llama, Plan(layers={"model.embed_tokens": EMBED_4BIT}))
    with kernel_view(llama, result) as report:
        assert isinstance(llama.model.embed_tokens, torch.nn.Embedding)
    assert report.counts == {"dense": 1} and report.reasons == {"embedding lookup": 1}


def test_space_binds_embeddings_only_by_exact_name(llama):
    names = list(target_modules(llama))
    embeddings = list(embedding_modules(llama))
    linears = [n for n in names if n not in embeddings]
    catch_all = SearchSpace.from_dict({"groups": [{"name": "all", "modules": ["re:.*"], "bits": [4, 8], "group_size": [32]}]})
    assert all(m != "model.embed_tokens" for u in catch_all.bind(linears, exact_names=embeddings).units for m in u.modules)
    named = SearchSpace.from_dict({"groups": [
        {"name": "embed", "modules": ["model.embed_tokens"], "tie": "group", "bits": [4, 8], "group_size": [32]},
        {"name": "all", "modules": ["re:.*"], "bits": [4, 8], "group_size": [32]},
    ]})
    bound = named.bind(linears, exact_names=embeddings)
    assert bound.units[0].modules == ("model.embed_tokens",)
    plan = bound.sample(lambda name, domain: domain.values[0])
    result = compress_(llama, plan)
    assert result.modules["model.embed_tokens"].bits == 4
