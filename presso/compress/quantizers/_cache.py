"""A per-worker cache of quantized layers, so a study that revisits a layer's choice reuses it.

GPTQ costs far more than round-to-nearest (a Cholesky factorisation and a column loop per
layer), but its result depends only on the layer's weight, its calibration statistics and
the choice; those are fixed for a worker, so EvoPress-style per-layer search can pay the
cost once per (layer, choice). Keys are ``(module, method, format, bits, group_size, symmetric,
sparsity, structure, criterion)`` (the zero kind follows from the method; with criterion
``sparsegpt`` a GPTQ entry is the joint prune+quantize layout, its mask in ``extras``); an
entry is used only while a sample of the (pruned) weight still matches the one it was made
from, so another model with the same module names misses.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from presso.compress.quantizers._base import QuantLayout


def _fingerprint(weight: torch.Tensor, count: int = 1024) -> torch.Tensor:
    flat = weight.detach().reshape(-1)
    step = max(1, flat.numel() // count)
    return flat[::step][:count].clone()


def _nbytes(layout: QuantLayout) -> int:
    extras = list((layout.extras or {}).values())
    return sum(t.numel() * t.element_size() for t in (layout.codes, layout.scales, layout.zeros, layout.mins, *extras)
               if isinstance(t, torch.Tensor))


class LayerCache:
    """Least-recently-used cache of :class:`QuantLayout` per layer choice, bounded in bytes.

    Args:
        max_bytes: bound on the stored layouts (codes are 1 byte per weight; default 1 GiB).

    Attributes:
        hits, misses: lookups answered from the cache, and not.
    """

    def __init__(self, max_bytes: int = 1 << 30):
        self.max_bytes = int(max_bytes)
        self.hits = self.misses = 0
        self._entries: OrderedDict = OrderedDict()
        self._bytes = 0

    @staticmethod
    def key(name: str, config, criterion) -> tuple:
        q, sp = config.quant, config.sparsity
        return (name, q.method, q.format, q.bits, q.group_size, q.symmetric, sp.amount, sp.structure,
                getattr(criterion, "value", criterion))

    def get(self, key: tuple, weight: torch.Tensor) -> QuantLayout | None:
        entry = self._entries.get(key)
        if entry is not None and entry[0].device == weight.device and torch.equal(entry[0], _fingerprint(weight)):
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[1]
        self.misses += 1
        return None

    def put(self, key: tuple, weight: torch.Tensor, layout: QuantLayout) -> None:
        size = _nbytes(layout)
        if size > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= _nbytes(old[1])
        self._entries[key] = (_fingerprint(weight), layout)
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, (_, evicted) = self._entries.popitem(last=False)
            self._bytes -= _nbytes(evicted)

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def __len__(self) -> int:
        return len(self._entries)
