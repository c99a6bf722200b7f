import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from presso.compress import pack_bits, packed_nbytes, unpack_bits


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(1, 8), data=st.data())
def test_round_trip_any_width(bits, data):
    values = data.draw(st.lists(st.integers(0, (1 << bits) - 1), max_size=300))
    codes = torch.tensor(values, dtype=torch.uint8)
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.numel() == packed_nbytes(len(values), bits) == (len(values) * bits + 7) // 8
    assert torch.equal(unpack_bits(packed, bits, len(values)), codes)


@pytest.mark.parametrize("bits", [2, 3])
def test_round_trip_2d_weight_codes(bits):
    codes = torch.randint(0, 1 << bits, (37, 64), dtype=torch.uint8)
    packed = pack_bits(codes, bits)
    assert packed.numel() == 37 * 64 * bits // 8  # 3-bit codes are packed densely, not in nibbles
    assert torch.equal(unpack_bits(packed, bits, codes.numel()).view(37, 64), codes)


def test_bit_order_is_lsb_first():
    # codes 1, 2, 3 at 3 bits -> bit stream 100 010 110 -> byte0 = 0b11010001, byte1 = 0b0
    packed = pack_bits(torch.tensor([1, 2, 3], dtype=torch.uint8), 3)
    assert packed.tolist() == [0b11010001, 0b0]


def test_unpack_rejects_wrong_length():
    with pytest.raises(ValueError):
        unpack_bits(torch.zeros(3, dtype=torch.uint8), 4, 7)
