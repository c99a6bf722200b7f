"""Every choice a built-in space offers saves bytes against its neighbours.

A choice that costs quality and saves no bytes only wastes trials: e.g. sparsity 0.2 at 4 bits
is stored densely (a bitmask plus the kept codes is smaller only when sparsity > 1/bits), so it
is plain damage. The bytes come from the size accounting the presso target stores
(:func:`presso.compress._size.module_specs`) and, for ggml formats, from ggml's row sizes.
"""

import itertools

import pytest
import torch

from presso.compress._compress import CompressedModule
from presso.compress._formats import row_nbytes
from presso.compress._size import module_specs
from presso.plan import KEEP_BITS, LayerConfig, parse_structure
from presso.spaces import Fixed, builtin_spaces, load_space

OUT_F, IN_F = 576, 1536  # a SmolLM2 down_proj; every offered group size and ggml block divides 1536


def layer_bytes(bits: int, group: int, symmetric: bool, method: str, sparsity: float) -> int:
    numel = OUT_F * IN_F
    pruned = round(sparsity * numel)
    rec = CompressedModule(name="m", config=LayerConfig(), shape=(OUT_F, IN_F), dtype=torch.float32,
                           bits=None if bits == KEEP_BITS else bits, group_size=group, symmetric=symmetric,
                           mask=torch.ones(1, dtype=torch.bool) if pruned else None, n_kept=numel - pruned,
                           method=method)
    return sum(spec.nbytes for _, spec in module_specs(rec, "m"))


def values(domain) -> list:
    return [domain.value] if isinstance(domain, Fixed) else list(domain.grid(100))


def sparsities(group) -> list[float]:
    out = set()
    for structure in values(group.structure):
        n_m = parse_structure(structure)
        out |= {1 - n_m[0] / n_m[1]} if n_m is not None else {float(s) for s in values(group.sparsity)}
    return sorted(out)


def strictly_decreasing(xs) -> bool:
    return all(a > b for a, b in zip(xs, xs[1:]))


SPACES = [(ref, group) for ref in builtin_spaces() for group in load_space(ref).groups]


@pytest.mark.parametrize("ref,group", SPACES, ids=[f"{r}:{g.name}" for r, g in SPACES])
def test_every_offered_choice_saves_bytes_against_its_neighbours(ref, group):
    formats = [f for f in values(group.format) if f is not None]
    if formats:  # ggml formats: bytes per row must all differ (no same-size pair to waste trials on)
        sizes = sorted((row_nbytes(f, IN_F), f) for f in formats)
        ties = [(a, b) for (x, a), (y, b) in zip(sizes, sizes[1:]) if x == y]
        assert not ties, f"{ref} group {group.name}: formats of equal size {ties}"
        return
    bits = sorted(int(b) for b in values(group.bits))
    quantized = [b for b in bits if b != KEEP_BITS]
    groups = sorted(int(g) for g in values(group.group_size))
    groups = groups[1:] + groups[:1] if groups[0] == 0 else groups  # 0 = per channel: the largest group
    spars = sparsities(group)
    for sym, method in itertools.product(values(group.symmetric), values(group.method)):
        sym = sym and method != "rtn_fmin"
        for b in bits:
            for g in (groups if b != KEEP_BITS else groups[:1]):
                by_sparsity = [layer_bytes(b, g, sym, method, s) for s in spars]
                assert strictly_decreasing(by_sparsity), (
                    f"{ref} group {group.name}: at {b} bits, group {g}, sparsities {spars} store {by_sparsity} bytes")
        for s in spars:
            by_bits = [layer_bytes(b, groups[0], sym, method, s) for b in reversed(bits)]
            assert strictly_decreasing(by_bits), f"{ref} group {group.name}: sparsity {s}, bits {bits}: {by_bits}"
            for b in quantized:
                by_group = [layer_bytes(b, g, sym, method, s) for g in groups]
                assert strictly_decreasing(by_group), (
                    f"{ref} group {group.name}: {b} bits, sparsity {s}, groups {groups}: {by_group}")


def test_the_rule_catches_sparsity_below_one_over_bits():
    # 0.2 at 4 bits: mask (1 bit) + 0.8 * 4 bits > 4 bits, so it is stored densely: no saving.
    assert layer_bytes(4, 32, False, "rtn", 0.2) == layer_bytes(4, 32, False, "rtn", 0.0)
    assert layer_bytes(4, 32, False, "rtn", 0.3) < layer_bytes(4, 32, False, "rtn", 0.0)
    assert layer_bytes(3, 32, False, "rtn", 0.3) == layer_bytes(3, 32, False, "rtn", 0.0)
