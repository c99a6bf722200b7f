"""Text for calibration and evaluation.

The default corpus is ``builtin:lee``: 300 news articles (``lee_background.cor``, about 60k
words) shipped inside the ``gensim`` wheel, read as a file without importing gensim. A user's
own text file (one document per line, or paragraphs separated by blank lines) works too.

Calibration and evaluation never overlap: :func:`split_documents` cuts the document list in
two disjoint parts (evaluation takes the last ``eval_fraction``) before tokenizing.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from presso.errors import PressoError

BUILTIN_CORPORA = {
    "builtin:lee": "lee_background.cor",
    "builtin:lee-heldout": "lee.cor",
}


def _gensim_test_data() -> Path:
    spec = importlib.util.find_spec("gensim")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise PressoError("text: the bundled corpus needs the 'gensim' package (pip install gensim==4.4.0)")
    return Path(list(spec.submodule_search_locations)[0]) / "test" / "test_data"


def load_documents(source: str = "builtin:lee") -> list[str]:
    """Return the documents of a corpus: a ``builtin:`` name or a path to a UTF-8 text file.

    Raises:
        PressoError: unknown built-in, missing file or a file with no text.
    """
    if source.startswith("builtin:"):
        if source not in BUILTIN_CORPORA:
            raise PressoError(f"text: unknown corpus {source!r}; allowed: {list(BUILTIN_CORPORA)} or a path to a text file")
        path = _gensim_test_data() / BUILTIN_CORPORA[source]
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise PressoError(f"text: file {source!r} does not exist; allowed: {list(BUILTIN_CORPORA)} or a path to a text file")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise PressoError(f"text: file {source!r} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        lines = text.split("\n\n") if "\n\n" in text else text.splitlines()
    documents = [" ".join(line.split()) for line in lines]
    documents = [d for d in documents if d]
    if not documents:
        raise PressoError(f"text: {source!r} holds no text")
    return documents


def split_documents(documents: list[str], eval_fraction: float = 0.25) -> tuple[list[str], list[str]]:
    """Split into (calibration, evaluation) documents; disjoint by construction."""
    if not 0.0 < eval_fraction < 1.0:
        raise PressoError(f"text.eval_fraction: got {eval_fraction!r}; allowed: a fraction in (0, 1)")
    if len(documents) < 2:
        raise PressoError(f"text: need at least 2 documents to split calibration from evaluation, got {len(documents)}")
    cut = min(len(documents) - 1, max(1, round(len(documents) * (1.0 - eval_fraction))))
    return documents[:cut], documents[cut:]


def token_batches(tokenizer, documents: list[str], n_sequences: int, seq_len: int):
    """Concatenate documents (separated by EOS when the tokenizer has one) and cut
    ``n_sequences`` windows of ``seq_len`` tokens: a LongTensor ``[n, seq_len]``.

    Raises:
        PressoError: the text is too short for the requested tokens.
    """
    import torch

    separator = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids: list[int] = []
    needed = n_sequences * seq_len
    for doc in documents:
        ids.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
        ids.extend(separator)
        if len(ids) >= needed:
            break
    if len(ids) < needed:
        raise PressoError(
            f"text: {len(ids)} tokens available but {n_sequences} x {seq_len} = {needed} requested; "
            "use fewer or shorter sequences, or a longer text"
        )
    return torch.tensor(ids[:needed], dtype=torch.long).view(n_sequences, seq_len)
