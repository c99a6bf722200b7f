"""Input helpers: the calibration/evaluation overlap check and the labelled-data loaders
(CSV or JSONL ``text,label`` rows; CoNLL-style ``token tag`` columns)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from presso.errors import PressoError
from presso.objectives._base import LabelledData, TaggedData

CONLL_SUFFIXES = (".conll", ".conllu", ".bio", ".iob", ".tsv", ".txt")
"""File suffixes read as CoNLL-style tagged words by :func:`load_labelled`."""


def _rows(ids: Any) -> list[tuple[int, ...]]:
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    return [tuple(int(t) for t in row) for row in ids]


def assert_disjoint(calib_ids: Any, eval_ids: Any) -> None:
    """Raise if any evaluation sequence also appears, identically, in the calibration set.

    Compression calibrated on the text it is scored on would look better than it is.
    Rows are compared token for token (padding included), so split text before tokenizing.

    Args:
        calib_ids: calibration token ids, a LongTensor ``[n, seq]`` or a list of sequences.
        eval_ids: evaluation token ids, same forms.

    Raises:
        PressoError: at least one identical sequence is in both; names the first pair.

    Example::

        >>> assert_disjoint([[1, 2, 3]], [[4, 5, 6]])
    """
    calib = {}
    for i, row in enumerate(_rows(calib_ids)):
        calib.setdefault(row, i)
    overlap = [(j, calib[row]) for j, row in enumerate(_rows(eval_ids)) if row in calib]
    if overlap:
        j, i = overlap[0]
        raise PressoError(
            f"calibration and evaluation data overlap: {len(overlap)} evaluation sequence(s) also in "
            f"calibration (first: eval row {j} == calib row {i}); split the text so they are disjoint"
        )


def load_labelled_csv(path: str | Path, text_column: str = "text", label_column: str = "label") -> LabelledData:
    """Read a labelled CSV (header row with ``text`` and ``label`` columns).

    Args:
        path: the CSV file (UTF-8).
        text_column: the column holding the text.
        label_column: the column holding the class label (any string).

    Returns:
        The texts and labels; blank texts are rejected.

    Raises:
        PressoError: missing file or column, blank rows, or fewer than 2 classes.
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            for column in (text_column, label_column):
                if column not in columns:
                    raise PressoError(
                        f"labelled CSV {str(path)!r}: no column {column!r}; found columns: "
                        f"{', '.join(columns) or '(none)'}; needed: {text_column}, {label_column}"
                    )
            texts, labels = [], []
            for line, row in enumerate(reader, start=2):
                text, label = (row.get(text_column) or "").strip(), (row.get(label_column) or "").strip()
                if not text or not label:
                    raise PressoError(
                        f"labelled CSV {str(path)!r} line {line}: empty {text_column!r} or {label_column!r}"
                    )
                texts.append(text)
                labels.append(label)
    except FileNotFoundError:
        raise PressoError(f"labelled CSV: file {str(path)!r} does not exist") from None
    except UnicodeDecodeError as exc:
        raise PressoError(f"labelled CSV {str(path)!r}: not UTF-8 ({exc.reason})") from None
    if not texts:
        raise PressoError(f"labelled CSV {str(path)!r}: no data rows")
    try:
        return LabelledData(texts, labels)
    except PressoError as exc:
        raise PressoError(f"labelled CSV {str(path)!r}: {exc}") from None


def load_labelled_jsonl(path: str | Path, text_column: str = "text", label_column: str = "label") -> LabelledData:
    """Read JSON Lines, one object per line with ``text`` and ``label`` keys (blank lines skipped).

    Raises:
        PressoError: missing file, a line that is not a JSON object, a missing or empty key.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise PressoError(f"labelled JSONL: file {str(path)!r} does not exist") from None
    except UnicodeDecodeError as exc:
        raise PressoError(f"labelled JSONL {str(path)!r}: not UTF-8 ({exc.reason})") from None
    texts, labels = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PressoError(f"labelled JSONL {str(path)!r} line {number}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise PressoError(f"labelled JSONL {str(path)!r} line {number}: got {type(row).__name__}; allowed: an object")
        text, label = str(row.get(text_column) or "").strip(), str(row.get(label_column, "")).strip()
        if not text or not label:
            raise PressoError(
                f"labelled JSONL {str(path)!r} line {number}: empty or missing {text_column!r} or {label_column!r}"
            )
        texts.append(text)
        labels.append(label)
    if not texts:
        raise PressoError(f"labelled JSONL {str(path)!r}: no data rows")
    try:
        return LabelledData(texts, labels)
    except PressoError as exc:
        raise PressoError(f"labelled JSONL {str(path)!r}: {exc}") from None


def load_conll(path: str | Path) -> TaggedData:
    """Read a CoNLL-style file: one word per line, the word in the first column and its tag in
    the last (whitespace separated), a blank line between sentences. ``-DOCSTART-`` lines and
    ``#`` comment lines are skipped.

    Raises:
        PressoError: missing file, a line with one column, or no sentence.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise PressoError(f"CoNLL file {str(path)!r} does not exist") from None
    except UnicodeDecodeError as exc:
        raise PressoError(f"CoNLL file {str(path)!r}: not UTF-8 ({exc.reason})") from None
    sentences: list[list[str]] = []
    tags: list[list[str]] = []
    words: list[str] = []
    line_tags: list[str] = []
    for number, line in enumerate([*lines, ""], start=1):
        columns = line.split()
        if not columns or columns[0] == "-DOCSTART-":
            if words:
                sentences.append(words)
                tags.append(line_tags)
            words, line_tags = [], []
            continue
        if columns[0].startswith("#") and not words:
            continue
        if len(columns) < 2:
            raise PressoError(
                f"CoNLL file {str(path)!r} line {number}: got {line.strip()!r}; allowed: 'word tag' columns"
            )
        words.append(columns[0])
        line_tags.append(columns[-1])
    if not sentences:
        raise PressoError(f"CoNLL file {str(path)!r}: no sentences")
    return TaggedData(sentences, tags)


def load_labelled(path: str | Path) -> LabelledData | TaggedData:
    """Read a labelled file by its suffix: ``.csv`` (``text,label`` header), ``.jsonl``/``.json``
    (one ``{"text", "label"}`` object a line) or a CoNLL-style file (:data:`CONLL_SUFFIXES`);
    or a built-in set (``builtin:newsgroups-test``, see :mod:`presso.data`).

    Raises:
        PressoError: an unknown suffix (names the allowed ones), or the reader's error.
    """
    if str(path).startswith("builtin:"):
        from presso.data import BUILTIN_LABELLED, newsgroups

        if str(path) not in BUILTIN_LABELLED:
            raise PressoError(f"labelled data: unknown built-in {str(path)!r}; allowed: {list(BUILTIN_LABELLED)} or a file")
        return LabelledData(*newsgroups(BUILTIN_LABELLED[str(path)]))
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return load_labelled_csv(path)
    if suffix in (".jsonl", ".json"):
        return load_labelled_jsonl(path)
    if suffix in CONLL_SUFFIXES:
        return load_conll(path)
    raise PressoError(
        f"labelled data: file {str(path)!r} has suffix {suffix!r}; allowed: .csv, .jsonl, .json (text,label) "
        f"or {', '.join(CONLL_SUFFIXES)} (CoNLL word tag columns)"
    )
