"""Input helpers: the calibration/evaluation overlap check and the labelled-CSV loader."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from presso.errors import PressoError
from presso.objectives._base import LabelledData


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
    """Read a labelled CSV (header row with ``text`` and ``label`` columns) for ``accuracy``.

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
