"""Text for calibration and evaluation.

The default corpus is ``builtin:lee``: 300 news articles (``lee_background.cor``, about 60k
words) shipped inside the ``gensim`` wheel, read as a file without importing gensim. A user's
own text file (one document per line, or paragraphs separated by blank lines) works too.

Calibration and evaluation never overlap: :func:`split_documents` cuts the document list in
two disjoint parts (evaluation takes the last ``eval_fraction``) before tokenizing.

Labelled posts: ``builtin:newsgroups-train`` / ``builtin:newsgroups-test`` are the 200
``mini_newsgroup`` posts of the gensim wheel (``alt.atheism`` and ``sci.space``, 100 each),
split 50/50 per class by file name into two fixed, disjoint halves (:func:`newsgroups`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from presso.errors import PressoError

BUILTIN_CORPORA = {
    "builtin:lee": "lee_background.cor",
    "builtin:lee-heldout": "lee.cor",
}


BUILTIN_LABELLED = {"builtin:newsgroups-train": "train", "builtin:newsgroups-test": "test"}


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


class _Bunch(dict):
    """Stands in for the old ``sklearn.datasets.base.Bunch`` the file was pickled with."""


def _read_mini_newsgroup(path: Path) -> dict:
    """Unpickle the zlib-compressed Python 2 pickle, allowing only the classes it needs.

    NOTE: a plain ``pickle.load`` would import whatever the file names (and sklearn no longer
    has ``sklearn.datasets.base``); this allowlist reads plain data only.
    """
    import copyreg
    import io
    import pickle
    import zlib

    import numpy as np

    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    allowed = {
        ("copy_reg", "_reconstructor"): copyreg._reconstructor,
        ("__builtin__", "dict"): dict,
        ("sklearn.datasets.base", "Bunch"): _Bunch,
        ("numpy", "dtype"): np.dtype,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    }

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) not in allowed:
                raise PressoError(f"labelled data: {path.name} names {module}.{name}, which is not plain data")
            return allowed[(module, name)]

    return dict(Unpickler(io.BytesIO(zlib.decompress(path.read_bytes())), encoding="latin1").load())


def _post_body(post: str) -> str:
    # The header names the newsgroup (the label itself), so only the body after it is kept.
    _, _, body = post.partition("\n\n")
    return " ".join(body.split())


def newsgroups(split: str) -> tuple[list[str], list[str]]:
    """The ``mini_newsgroup`` posts of one half: ``(texts, labels)``, 50 per class.

    Each class's posts are sorted by file name and dealt alternately to ``train`` and
    ``test``, so the halves are fixed and disjoint. Headers are dropped (they name the
    newsgroup); posts with an empty body are skipped.

    Raises:
        PressoError: ``split`` is not ``train`` or ``test``.
    """
    if split not in ("train", "test"):
        raise PressoError(f"newsgroups: split {split!r}; allowed: 'train', 'test'")
    bunch = _read_mini_newsgroup(_gensim_test_data() / "mini_newsgroup")
    names = [str(n) for n in bunch["target_names"]]
    rows = sorted(zip((str(f) for f in bunch["filenames"]), bunch["data"], (int(t) for t in bunch["target"])))
    texts, labels = [], []
    for label in range(len(names)):
        posts = [text for _, text, target in rows if target == label]
        for i, post in enumerate(posts):
            body = _post_body(post)
            if body and (i % 2 == (0 if split == "train" else 1)):
                texts.append(body)
                labels.append(names[label])
    return texts, labels
