"""TVQ quantize/dequantize/pack against hand-computed groups."""

from __future__ import annotations

import pytest
import torch

from mergekit_ir.merging.quantize import (
    dequantize,
    group_bound,
    pack,
    packed_nbytes,
    quantize,
    unpack,
)


def test_pack_3_bits_across_byte_boundaries():
    # 5 | 3<<3 | 7<<6 = 477 = 0x01DD -> bytes 0xDD, 0x01 (value 7 straddles bytes 0 and 1)
    packed = pack(torch.tensor([5, 3, 7]), 3)
    assert packed.tolist() == [0xDD, 0x01]
    assert unpack(packed, 3, 3).tolist() == [5, 3, 7]


def test_pack_4_and_2_bits_by_hand():
    assert pack(torch.tensor([1, 15, 2]), 4).tolist() == [0xF1, 0x02]
    assert pack(torch.tensor([1, 2, 3, 0, 3]), 2).tolist() == [1 | 2 << 2 | 3 << 4, 3]
    assert pack(torch.tensor([200, 7]), 8).tolist() == [200, 7]


@pytest.mark.parametrize("bits", [8, 4, 3, 2])
@pytest.mark.parametrize("n", [1, 7, 8, 9, 23, 64])
def test_pack_roundtrip(bits, n):
    codes = torch.randint(0, 2**bits, (n,), generator=torch.Generator().manual_seed(n))
    packed = pack(codes, bits)
    assert packed.numel() == packed_nbytes(n, bits) == (n * bits + 7) // 8
    assert torch.equal(unpack(packed, bits, n), codes.to(torch.uint8))


def test_unpack_wrong_length():
    with pytest.raises(ValueError, match="expected 2"):
        unpack(torch.zeros(3, dtype=torch.uint8), 3, 3)


def test_hand_computed_group_2_bits():
    # min 0, max 3: z = 0, s = (3 - 0)/3 = 1 (exact in fp16): codes are the values
    q = quantize(torch.tensor([[0.0, 1.0, 2.0, 3.0]]), bits=2, group_size=4)
    assert q.zeros.tolist() == [[0.0]] and q.scales.tolist() == [[1.0]]
    assert unpack(q.packed, 2, 4).tolist() == [0, 1, 2, 3]
    assert dequantize(q).tolist() == [[0.0, 1.0, 2.0, 3.0]]


def test_constant_group_is_exact():
    q = quantize(torch.full((2, 5), 0.25), bits=3, group_size=4)  # 0.25 is exact in fp16
    assert q.scales.eq(0).all()
    assert torch.equal(dequantize(q), torch.full((2, 5), 0.25))


def test_one_outlier():
    # 7 zeros and one 7.0: 3 bits give levels 0..7 with s = 1, so every value is exact;
    # at 2 bits s = 7/3 and the zeros stay exact (z = 0) while 7.0 -> 3·s16
    x = torch.tensor([[0.0] * 7 + [7.0]])
    assert torch.equal(dequantize(quantize(x, 3, 8)), x)
    q2 = quantize(x, 2, 8)
    s16 = torch.tensor(7.0 / 3).half()
    assert q2.scales.item() >= 7.0 / 3 and q2.scales.item() == pytest.approx(s16.item(), rel=1e-3)
    y = dequantize(q2)
    assert torch.equal(y[0, :7], torch.zeros(7))
    assert y[0, 7].item() == pytest.approx(3 * q2.scales.float().item())


def test_odd_sizes_last_group_shorter():
    # last dim 5 with group size 4: groups [0..3] and [4] (a group of one value is exact)
    x = torch.tensor([[0.0, 0.5, 1.0, 1.5, -3.0], [2.0, 2.0, 2.0, 2.0, 8.0]])
    q = quantize(x, 4, 4)
    assert q.scales.shape == (2, 2) and q.packed.numel() == packed_nbytes(10, 4)
    y = dequantize(q)
    assert y[:, 4].tolist() == [-3.0, 8.0]
    assert y[1, :4].tolist() == [2.0] * 4
    assert torch.allclose(y[0, :4], x[0, :4], atol=1.5 / 15 / 2 * 1.001)


@pytest.mark.parametrize("bits", [8, 4, 3, 2])
@pytest.mark.parametrize("shape", [(3, 130), (257,), (2, 3, 67)])
def test_error_bound_per_group(bits, shape):
    """|x − x̂| ≤ s16/2 per group, and s16 ≤ (max − min + ulp16(min))/(2^b − 1)·(1 + 2^-10)."""
    g = torch.Generator().manual_seed(bits)
    x = torch.randn(shape, generator=g) * 1e-2
    x.reshape(-1)[5] = 0.3  # an outlier
    gs = 64
    q = quantize(x, bits, gs)
    err = (dequantize(q) - x).abs()
    assert (err <= group_bound(x, q) * (1 + 1e-5) + 1e-9).all()
    rows = x.reshape(-1, shape[-1])
    levels = 2**bits - 1
    for r in range(rows.shape[0]):
        for j in range(q.scales.shape[1]):
            grp = rows[r, j * gs : (j + 1) * gs]
            lo, hi = grp.min().item(), grp.max().item()
            slack = lo - q.zeros[r, j].float().item()
            assert 0 <= slack <= abs(lo) * 2**-10 + 6e-8
            assert q.scales[r, j].float().item() <= (hi - lo + slack) / levels * (1 + 2**-10) + 6e-8


def test_rejects_bad_parameters():
    with pytest.raises(ValueError, match="bits must be one of"):
        quantize(torch.zeros(4), 5)
    with pytest.raises(ValueError, match="fp16 range"):
        quantize(torch.tensor([0.0, 1e6]), 4)
