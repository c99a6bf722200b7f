"""The gguf target on a tiny BERT encoder (MiniLM's WordPiece vocabulary, 2 layers): the file is
llama.cpp's ``bert`` embedding architecture, has the predicted bytes, loads in llama-cpp-python,
tokenizes the study text as the Hugging Face tokenizer does, and its mean-pooled embeddings equal
torch's."""

import copy

import pytest
import torch

from presso.compress import collect_calibration, compress_
from presso.errors import PressoError
from presso.models import minilm_dir
from presso.objectives._embedding import mean_cosine, pooled_embeddings
from presso.plan import LayerConfig, Plan, QuantConfig
from presso.targets import get_target

VOCAB = 30522  # MiniLM's tokenizer: the file's vocabulary comes from the model folder's tokenizer files


@pytest.fixture(scope="module")
def tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    # hidden 64: rows of 64 take only the 32-blocks; intermediate 256: the FFN down projection takes K-quants.
    config = BertConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=128, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    model = BertModel(config).eval()
    model.config._name_or_path = str(minilm_dir())
    return model


def _batch(rows=3, width=40, seed=1):
    ids = torch.randint(1000, VOCAB, (rows, width), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[1, width - 10:] = 0  # a right-padded row: llama.cpp sees its real tokens only
    return ids, mask


def _embeddings(model, batch):
    with torch.no_grad():
        return pooled_embeddings(model, [batch])


EVERY_MATRIX = {"re:.*": LayerConfig(quant=QuantConfig(format="F16")),
                "embeddings.word_embeddings": LayerConfig(quant=QuantConfig(format="F16"))}

MIXED = Plan(layers={
    "re:.*attention.*": LayerConfig(quant=QuantConfig(format="Q8_0")),
    "re:.*intermediate.dense": LayerConfig(quant=QuantConfig(format="Q4_0")),
    "re:encoder.layer.\\d+.output.dense": LayerConfig(quant=QuantConfig(format="Q4_K")),
    "embeddings.word_embeddings": LayerConfig(quant=QuantConfig(format="Q5_1")),
})


@pytest.mark.parametrize("plan,atol", [(Plan(), 1e-4), (Plan(layers=EVERY_MATRIX), 2e-3)], ids=["F32", "F16"])
def test_float_files_load_in_llama_cpp_and_reproduce_torch_embeddings(tmp_path, tiny_bert, plan, atol):
    target = get_target("gguf")
    target.check_plan(tiny_bert, plan)
    compressed = copy.deepcopy(tiny_bert)
    result = compress_(compressed, plan)
    written = target.write(compressed, result, None, tmp_path / "model.gguf")
    assert written.on_disk_bytes == written.predicted_bytes == target.predict_bytes(compressed, result)
    if plan.layers:
        assert written.predicted_bytes < target.dense_bytes(tiny_bert)
    else:
        assert written.on_disk_bytes == target.dense_bytes(tiny_bert)
    runtime = target.load(written.path, n_threads=1)
    batch = _batch()
    expected, got = _embeddings(compressed, batch), _embeddings(runtime, batch)
    # F32: float rounding and ggml's tanh GELU; F16: llama.cpp also rounds activations to fp16 for the matmuls.
    assert (got - expected).abs().max().item() < atol
    assert mean_cosine(got, expected) > 0.9999


def test_a_mixed_ggml_file_has_the_predicted_bytes_and_close_embeddings(tmp_path, tiny_bert):
    target = get_target("gguf")
    target.check_plan(tiny_bert, MIXED)
    compressed = copy.deepcopy(tiny_bert)
    ids, _ = _batch(4, 32, seed=2)
    result = compress_(compressed, MIXED, calibration=collect_calibration(tiny_bert, ids))
    assert result.modules["encoder.layer.0.output.dense"].format == "Q4_K"
    written = target.write(compressed, result, None, tmp_path / "mixed.gguf")
    assert written.on_disk_bytes == written.predicted_bytes
    assert written.predicted_bytes < 0.3 * target.dense_bytes(tiny_bert)
    kernels = target.kernels(compressed, result)
    assert "pooler.dense" not in kernels  # not in the file, so it runs nowhere
    assert "q4_k" in kernels["encoder.layer.0.output.dense"] and "get_rows q5_1" in kernels["embeddings.word_embeddings"]
    batch = _batch()
    got = _embeddings(target.load(written.path, n_threads=1), batch)
    # llama.cpp rounds activations to 8 bits inside quantized matmuls: close, not identical.
    assert mean_cosine(got, _embeddings(compressed, batch)) > 0.999


def test_the_file_carries_llama_cpps_bert_keys_and_wordpiece_vocab(tmp_path, tiny_bert):
    import gguf

    written = get_target("gguf").write(tiny_bert, compress_(copy.deepcopy(tiny_bert), Plan()), None, tmp_path / "m.gguf")
    fields = gguf.GGUFReader(str(written.path)).fields
    value = {name: fields[name].contents() for name in fields}
    assert value["general.architecture"] == "bert" and value["bert.attention.causal"] is False
    assert value["bert.pooling_type"] == int(gguf.PoolingType.MEAN) and value["bert.context_length"] == 128
    assert value["tokenizer.ggml.model"] == "bert" and value["tokenizer.ggml.token_type_count"] == 2
    tokens = value["tokenizer.ggml.tokens"]
    assert len(tokens) == VOCAB and tokens[101] == "[CLS]" and tokens[7592] == "\u2581hello"
    assert tokens[2015] == "s"  # "##s": continuation pieces lose their prefix
    assert value["tokenizer.ggml.unknown_token_id"] == 100 and value["tokenizer.ggml.seperator_token_id"] == 102
    names = {t.name for t in gguf.GGUFReader(str(written.path)).tensors}
    assert {"token_embd.weight", "token_types.weight", "position_embd.weight", "token_embd_norm.bias",
            "blk.1.attn_q.weight", "blk.1.attn_output_norm.weight", "blk.1.ffn_down.bias",
            "blk.1.layer_output_norm.weight"} <= names
    assert not any(n.startswith("pooler") for n in names)


def test_llama_cpp_tokenizes_the_study_text_as_the_hf_tokenizer_does(tmp_path, tiny_bert):
    from transformers import AutoTokenizer

    from presso.data import load_documents
    from presso.targets._llama_runtime import tokenization_mismatches

    written = get_target("gguf").write(tiny_bert, compress_(copy.deepcopy(tiny_bert), Plan()), None, tmp_path / "m.gguf")
    runtime = get_target("gguf").load(written.path, n_threads=1)
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    texts = load_documents("builtin:lee")[-40:] + ["Naïve café façade, Zürich: 3.5% (approx.) — e-mail #42!"]
    assert tokenization_mismatches(runtime, tokenizer, texts) == []


def test_bad_choices_are_one_line_errors(tmp_path, tiny_bert):
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    target = get_target("gguf")
    plan = Plan(layers={"re:.*attention.self.query": LayerConfig(quant=QuantConfig(format="Q4_K"))})
    with pytest.raises(PressoError) as info:
        target.check_plan(tiny_bert, plan)
    message = str(info.value)
    assert "'encoder.layer.0.attention.self.query'" in message and "Q4_K" in message and "rows of 64" in message
    assert "allowed: [" in message and "Q8_0" in message and "\n" not in message
    head = BertForSequenceClassification(BertConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                                    num_hidden_layers=1, num_attention_heads=2))
    with pytest.raises(PressoError, match="got a BertForSequenceClassification; allowed: LlamaForCausalLM, BertModel"):
        target.check_plan(head, Plan())
    bare = BertModel(BertConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                num_attention_heads=2))
    bare.config._name_or_path = str(tmp_path)  # a folder without tokenizer files
    with pytest.raises(PressoError, match="no WordPiece tokenizer"):
        target.check_plan(bare, Plan())


def test_sequences_longer_than_the_models_positions_are_refused(tmp_path, tiny_bert):
    written = get_target("gguf").write(tiny_bert, compress_(copy.deepcopy(tiny_bert), Plan()), None, tmp_path / "m.gguf")
    with pytest.raises(PressoError, match="exceed the model's 128 positions"):
        get_target("gguf").load(written.path, n_ctx=129)
    runtime = get_target("gguf").load(written.path, n_threads=1)
    with pytest.raises(PressoError, match="allowed: 1 to 128"):
        runtime(input_ids=torch.zeros(1, 129, dtype=torch.long))


def test_a_study_window_longer_than_the_position_table_is_refused_before_any_trial(tiny_bert):
    from types import SimpleNamespace

    from presso.search._config import EvalConfig
    from presso.search._evaluator import _eval_context

    loaded = SimpleNamespace(model=tiny_bert, task="encoder", tokenizer=None)
    text = SimpleNamespace(eval_ids=torch.zeros(2, 129, dtype=torch.long))
    with pytest.raises(PressoError, match=r"eval.seq_len: got 129; allowed: at most 128"):
        _eval_context(loaded, text, "cpu", EvalConfig())
