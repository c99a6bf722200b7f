"""Dense bit packing of small unsigned integer codes into ``uint8`` byte tensors.

Layout (the on-disk format depends on it): codes are taken in row-major order and laid
end to end, LSB first: code ``i`` occupies bits ``[i*b, (i+1)*b)`` of the little-endian
bit stream, so ``n`` codes of ``b`` bits take exactly ``ceil(n * b / 8)`` bytes. ``b`` may be
any width from 1 to 8 (1 is used for sparsity bitmasks, 3/5/6/7 are packed as densely as
2/4). Everything runs on the tensor's own device.
"""

from __future__ import annotations

import torch


def packed_nbytes(numel: int, bits: int) -> int:
    """Bytes taken by ``numel`` codes of ``bits`` bits: ``ceil(numel * bits / 8)``."""
    return (numel * bits + 7) // 8


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned codes (each ``< 2**bits``) into a flat ``uint8`` tensor.

    Args:
        codes: integer tensor of any shape; values must lie in ``[0, 2**bits)``.
        bits: code width, 1 to 8.

    Returns:
        A 1-D ``uint8`` tensor of ``packed_nbytes(codes.numel(), bits)`` bytes.
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    flat = codes.reshape(-1)
    n = flat.numel()
    if bits == 8:
        return flat.to(torch.uint8).clone()
    # Eight codes of b bits fill exactly b bytes; assemble each group of eight in one int64
    # (at most 56 bits used, so no sign trouble) and split it into bytes.
    groups = (n + 7) // 8
    padded = torch.zeros(groups * 8, dtype=torch.int64, device=flat.device)
    padded[:n] = flat.to(torch.int64)
    shifts = torch.arange(8, device=flat.device, dtype=torch.int64) * bits
    words = (padded.view(groups, 8) << shifts).sum(dim=1)
    byte_shifts = torch.arange(bits, device=flat.device, dtype=torch.int64) * 8
    out = ((words.unsqueeze(1) >> byte_shifts) & 0xFF).to(torch.uint8).reshape(-1)
    return out[: packed_nbytes(n, bits)].clone()


def unpack_bits(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``numel`` codes as a flat ``uint8`` tensor."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    flat = packed.reshape(-1)
    if flat.numel() != packed_nbytes(numel, bits):
        raise ValueError(f"{flat.numel()} packed bytes cannot hold exactly {numel} codes of {bits} bits")
    if bits == 8:
        return flat.to(torch.uint8).clone()
    groups = (numel + 7) // 8
    padded = torch.zeros(groups * bits, dtype=torch.int64, device=flat.device)
    padded[: flat.numel()] = flat.to(torch.int64)
    byte_shifts = torch.arange(bits, device=flat.device, dtype=torch.int64) * 8
    words = (padded.view(groups, bits) << byte_shifts).sum(dim=1)
    shifts = torch.arange(8, device=flat.device, dtype=torch.int64) * bits
    codes = (words.unsqueeze(1) >> shifts) & ((1 << bits) - 1)
    return codes.reshape(-1)[:numel].to(torch.uint8)
