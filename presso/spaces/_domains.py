"""Search-space domains: tiny data classes in the spirit of Ray Tune's Float/Integer/Categorical,
checked like Optuna's distributions. They know nothing about any sampler."""

from __future__ import annotations

import math
from dataclasses import dataclass

from presso.errors import PressoError
from presso.plan import FORMAT_BITS


@dataclass(frozen=True)
class FloatRange:
    low: float
    high: float
    step: float | None = None
    log: bool = False

    def __post_init__(self):
        if not self.low <= self.high:
            raise PressoError(f"range: `low <= high` must hold, but got (low={self.low!r}, high={self.high!r})")
        if self.step is not None and not self.step > 0:
            raise PressoError(f"range.step: got {self.step!r}; allowed: a positive number")
        if self.log and (self.step is not None or self.low <= 0):
            raise PressoError(f"range.log: a log range needs low > 0 and no step, got (low={self.low!r}, step={self.step!r})")

    def grid(self, points: int = 5) -> list[float]:
        """Values a grid walk visits: every step, or ``points`` evenly spaced values."""
        if self.step is not None:
            count = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
            return [round(self.low + i * self.step, 10) for i in range(count)]
        if self.low == self.high:
            return [self.low]
        return [self.low + (self.high - self.low) * i / (points - 1) for i in range(points)]


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int
    step: int = 1
    log: bool = False

    def __post_init__(self):
        if not self.low <= self.high:
            raise PressoError(f"range: `low <= high` must hold, but got (low={self.low!r}, high={self.high!r})")
        if self.step < 1:
            raise PressoError(f"range.step: got {self.step!r}; allowed: an integer >= 1")

    def grid(self, points: int = 5) -> list[int]:
        return list(range(self.low, self.high + 1, self.step))


@dataclass(frozen=True)
class Choice:
    values: tuple

    def __post_init__(self):
        if len(self.values) == 0:
            raise PressoError("choice: an empty list offers nothing to choose; give at least one value")
        if len(set(map(repr, self.values))) != len(self.values):
            raise PressoError(f"choice: values must be distinct, got {list(self.values)!r}")

    def grid(self, points: int = 5) -> list:
        return list(self.values)


@dataclass(frozen=True)
class Fixed:
    value: object

    def grid(self, points: int = 5) -> list:
        return [self.value]


Domain = FloatRange | IntRange | Choice | Fixed


def nearest_value(domain: Domain, wanted):
    """The allowed value of ``domain`` nearest ``wanted``: clamped (and put on the step) for a
    range; for a list the closest number, the ggml format closest in bits per weight, or else
    the first value; ``None`` gives the lowest. Ties go to the smaller value."""
    if isinstance(domain, (FloatRange, IntRange)):
        if wanted is None:
            wanted = domain.low
        value = min(max(wanted, domain.low), domain.high)
        if domain.step:
            value = domain.low + round((value - domain.low) / domain.step) * domain.step
            value = min(value, domain.high)
        return int(value) if isinstance(domain, IntRange) else round(float(value), 10)
    values = list(domain.values)
    if wanted in values:
        return wanted
    formats = [v for v in values if v in FORMAT_BITS]
    if wanted in FORMAT_BITS and formats:
        # A ggml format moves to the offered one nearest in bits per weight (a uniform "Q2_K"
        # recipe gives a group without K-quants IQ4_NL, not its largest format).
        return min(formats, key=lambda v: (abs(FORMAT_BITS[v] - FORMAT_BITS[wanted]), FORMAT_BITS[v]))
    numeric = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if isinstance(wanted, (int, float)) and not isinstance(wanted, bool) and numeric:
        return min(numeric, key=lambda v: (abs(v - wanted), v))
    return values[0]
