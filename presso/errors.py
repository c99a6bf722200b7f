"""The one exception type a user sees.

``PressoError`` carries a message meant to be printed as one line: what is wrong, the value
that was given and what is allowed. The CLI prints it without a traceback (unless ``--debug``).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PressoError(ValueError):
    """A user-facing error: bad input, a missing file, an unreachable store."""


def did_you_mean(value: str, allowed: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` when a close match exists, else ``""``."""
    close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_keys(where: str, data: dict, allowed: Iterable[str]) -> None:
    """Reject unknown keys in a hand-written mapping, naming the key and what is allowed."""
    allowed = list(allowed)
    for key in data:
        if key not in allowed:
            raise PressoError(
                f"{where}: unknown key {key!r}{did_you_mean(key, allowed)}; allowed keys: {', '.join(allowed)}"
            )
