import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from presso.compress import dequantize, quantize
from presso.compress._prune import prune_mask


def _weight(seed=0, shape=(48, 64)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 0.05


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("group_size", [0, 16, 64])
@pytest.mark.parametrize("symmetric", [False, True])
def test_codes_in_range_and_error_bounded(bits, group_size, symmetric):
    w = _weight(bits)
    codes, scales, zeros = quantize(w, bits, group_size, symmetric)
    groups = 1 if group_size == 0 else 64 // group_size
    assert codes.dtype == torch.uint8 and codes.shape == w.shape
    assert scales.dtype == torch.float16 and scales.shape == (48, groups)
    assert int(codes.max()) <= (1 << bits) - 1
    if symmetric:
        assert zeros is None and int(codes.min()) >= 1
    else:
        assert zeros.dtype == torch.uint8 and int(zeros.max()) <= (1 << bits) - 1
    deq = dequantize(codes, scales, zeros, bits, group_size)
    step = scales.float().repeat_interleave(64 // groups, dim=1)
    assert bool(((w - deq).abs() <= step / 2 * (1 + 1e-5) + 1e-8).all())


@settings(max_examples=40, deadline=None)
@given(bits=st.sampled_from([2, 3, 4, 8]), seed=st.integers(0, 10_000), symmetric=st.booleans(),
       amount=st.floats(0.0, 0.9))
def test_pruned_zeros_stay_exactly_zero(bits, seed, symmetric, amount):
    w = _weight(seed, (16, 32))
    mask = prune_mask(w, amount, None)
    w = w * mask
    codes, scales, zeros = quantize(w, bits, 8, symmetric)
    deq = dequantize(codes, scales, zeros, bits, 8)
    assert bool((deq[~mask] == 0).all())


def test_all_zero_group_is_safe():
    w = torch.zeros(4, 32)
    w[0, :16] = torch.linspace(-1, 1, 16)
    codes, scales, zeros = quantize(w, 4, 16, False)
    deq = dequantize(codes, scales, zeros, 4, 16)
    assert torch.isfinite(scales.float()).all() and bool((scales.float() > 0).all())
    assert bool((deq[1:] == 0).all())


def test_dequantize_work_buffer_is_bit_identical():
    w = _weight(3)
    work = torch.empty_like(w)
    codes, scales, zeros = quantize(w, 3, 16, False, work=work)
    assert torch.equal(work, codes.float())
    assert torch.equal(dequantize(codes, scales, zeros, 3, 16, work=work), dequantize(codes, scales, zeros, 3, 16))


def test_one_sided_range_includes_zero():
    # all-positive group: the range is [0, max], so 0 is representable exactly
    w = torch.rand(8, 32) + 0.5
    codes, scales, zeros = quantize(w, 4, 0, False)
    assert bool((zeros == 0).all())


@settings(max_examples=50, deadline=None)
@given(value=st.floats(1e-9, 6e4, allow_nan=False))
def test_fp16_scale_rounds_up_to_the_nearest_fp16(value):
    from presso.compress._quant import _to_fp16_scale

    s16 = _to_fp16_scale(torch.tensor([value], dtype=torch.float32))
    assert s16.dtype == torch.float16
    up = float(s16)
    assert up >= float(torch.tensor(value, dtype=torch.float32)) or value < 2.0**-24
    below = float((s16.view(torch.int16) - 1).view(torch.float16))
    assert below < float(torch.tensor(value, dtype=torch.float32))
