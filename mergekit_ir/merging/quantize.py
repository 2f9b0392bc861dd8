"""Asymmetric min-max quantization of task vectors per group, bit-packed (TVQ).

Task vectors have a narrow value range, so a few bits per value keep them
(TVQ, arXiv 2503.06921). Each tensor is viewed as rows along its last dimension;
each row is cut into groups of ``group_size`` values (the last group may be
shorter). A group stores a zero-point ``z`` and a scale ``s`` in fp16 and one code
``q ∈ [0, 2^b − 1]`` per value; the value comes back as ``z + q·s``.

fp16 rounding must not break the error bound, so ``z`` is rounded *down* to the
largest fp16 ≤ min and ``s`` *up* to the smallest fp16 ≥ (max − z)/(2^b − 1): every
value of the group then lies in ``[z, z + (2^b − 1)·s]``, no code is clipped, and
``|x − x̂| ≤ s/2`` with ``s ≤ (max − min + (min − z))/(2^b − 1)·(1 + 2^-10)`` (up to
fp32 rounding of the arithmetic), i.e. the bound (max − min)/(2·(2^b − 1)) widened
by fp16's relative step and the zero-point's rounding.

Codes are packed least-significant bit first into a flat uint8 stream: value ``i``
occupies bits ``[i·b, (i + 1)·b)``, so 3-bit codes straddle byte boundaries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

BITS = (8, 4, 3, 2)


@dataclass(frozen=True)
class QuantizedTensor:
    """One tensor's codes (packed), per-group scales and zero-points, and its shape."""

    packed: torch.Tensor  # uint8, ceil(numel·bits/8)
    scales: torch.Tensor  # fp16, (rows, groups)
    zeros: torch.Tensor  # fp16, (rows, groups)
    shape: tuple[int, ...]
    bits: int
    group_size: int


def check_bits(bits: int) -> None:
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, not {bits}")


def layout(shape: tuple[int, ...], group_size: int) -> tuple[int, int, int]:
    """(rows, row length, groups per row) of a tensor viewed along its last dimension."""
    last = shape[-1] if shape else 1
    rows = math.prod(shape[:-1]) if shape else 1
    return rows, last, math.ceil(last / group_size) if last else 0


def packed_nbytes(numel: int, bits: int) -> int:
    return (numel * bits + 7) // 8


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Flat codes (< 2^bits) into a uint8 stream, least-significant bit first."""
    check_bits(bits)
    codes = codes.reshape(-1).to(torch.uint8)
    if bits == 8:
        return codes.clone()
    n = codes.numel()
    if 8 % bits == 0:  # 4 and 2 bits: whole codes per byte
        per = 8 // bits
        padded = torch.zeros(math.ceil(n / per) * per, dtype=torch.uint8)
        padded[:n] = codes
        lanes = padded.reshape(-1, per)
        out = torch.zeros(lanes.shape[0], dtype=torch.uint8)
        for j in range(per):
            out |= lanes[:, j] << (j * bits)
        return out
    # 3 bits: eight codes fill exactly three bytes (24 bits), packed as one int32 word
    padded = torch.zeros(math.ceil(n / 8) * 8, dtype=torch.int32)
    padded[:n] = codes
    word = torch.zeros(padded.numel() // 8, dtype=torch.int32)
    for j, lane in enumerate(padded.reshape(-1, 8).unbind(1)):
        word |= lane << (3 * j)
    out = torch.stack([(word >> s) & 0xFF for s in (0, 8, 16)], dim=1).to(torch.uint8)
    return out.reshape(-1)[: packed_nbytes(n, bits)].clone()


def unpack(
    packed: torch.Tensor, bits: int, numel: int, dtype: torch.dtype = torch.uint8
) -> torch.Tensor:
    """The first ``numel`` codes of a packed stream, as ``dtype`` (float32 saves a pass when
    they are dequantized next).

    The stream is cut into chunks holding whole codes (one byte: 8/bits codes; 3 bits:
    three bytes, eight codes); code ``j`` of every chunk is extracted at once with shifts
    on a strided view of the bytes and written straight into its lane of the output.
    """
    check_bits(bits)
    packed = packed.reshape(-1)
    if packed.numel() != packed_nbytes(numel, bits):
        raise ValueError(
            f"packed codes hold {packed.numel()} bytes, expected {packed_nbytes(numel, bits)} "
            f"for {numel} values at {bits} bits"
        )
    if bits == 8:
        return packed.to(dtype, copy=True)
    chunk_bytes, chunk_codes = (1, 8 // bits) if 8 % bits == 0 else (3, 8)
    chunks = math.ceil(packed.numel() / chunk_bytes)
    if chunks * chunk_bytes != packed.numel():
        packed = torch.cat([packed, packed.new_zeros(chunks * chunk_bytes - packed.numel())])
    b = packed.reshape(chunks, chunk_bytes)
    out = torch.empty(chunks, chunk_codes, dtype=dtype)
    mask = (1 << bits) - 1
    for j in range(chunk_codes):
        byte, shift = divmod(j * bits, 8)
        lane = b[:, byte] >> shift if shift else b[:, byte]
        if shift + bits > 8:  # the code continues in the next byte
            lane = lane | (b[:, byte + 1] << (8 - shift))
        out[:, j].copy_(lane if shift + bits == 8 else lane & mask)  # top bits need no mask
    return out.reshape(-1)[:numel]


def _groups(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """(rows, groups, group_size) view, the last group padded by repeating its last value
    (which changes neither its min nor its max)."""
    rows, last = x.shape
    pad = -last % group_size
    if pad:
        x = torch.cat([x, x[:, -1:].expand(rows, pad)], dim=1)
    return x.reshape(rows, -1, group_size)


def _expand(per_group: torch.Tensor, group_size: int, last: int) -> torch.Tensor:
    return per_group.float().repeat_interleave(group_size, dim=1)[:, :last]


def quantize(t: torch.Tensor, bits: int, group_size: int = 128) -> QuantizedTensor:
    """Quantize ``t`` (any float dtype, finite values) per group along its last dimension."""
    check_bits(bits)
    if group_size < 1:
        raise ValueError(f"group_size must be ≥ 1, not {group_size}")
    shape = tuple(t.shape)
    rows, last, _ = layout(shape, group_size)
    x = t.detach().to("cpu", torch.float32).reshape(rows, last)
    if x.numel() == 0:
        empty = torch.empty(rows, 0, dtype=torch.float16)
        return QuantizedTensor(
            torch.empty(0, dtype=torch.uint8), empty, empty, shape, bits, group_size
        )
    if not torch.isfinite(x).all():
        raise ValueError("NaN/Inf values cannot be quantized")
    g = _groups(x, group_size)
    lo, hi = g.amin(dim=2), g.amax(dim=2)
    z16 = lo.half()
    down = z16.float() > lo
    z16 = torch.where(down, torch.nextafter(z16, torch.full_like(z16, -math.inf)), z16)
    levels = (1 << bits) - 1
    s = (hi - z16.float()) / levels
    s16 = s.half()
    up = s16.float() < s
    s16 = torch.where(up, torch.nextafter(s16, torch.full_like(s16, math.inf)), s16)
    if not (torch.isfinite(z16).all() and torch.isfinite(s16).all()):
        raise ValueError("values outside the fp16 range (|x| > 65504) cannot be quantized")
    scale, zero = _expand(s16, group_size, last), _expand(z16, group_size, last)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.where(scale > 0, torch.round((x - zero) / safe), torch.zeros_like(x))
    codes = codes.clamp_(0, levels).to(torch.uint8)
    return QuantizedTensor(pack(codes, bits), s16, z16, shape, bits, group_size)


def dequantize(q: QuantizedTensor) -> torch.Tensor:
    """x̂ = z + code·s in fp32, in the original shape."""
    rows, last, _ = layout(q.shape, q.group_size)
    codes = unpack(q.packed, q.bits, rows * last, torch.float32)
    return dequantize_codes(codes, q.scales, q.zeros, q.shape, q.group_size)


def dequantize_codes(
    codes: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    shape: tuple[int, ...],
    group_size: int,
) -> torch.Tensor:
    """x̂ = z + code·s from unpacked codes (any slice of whole rows of a quantized tensor)."""
    rows, last, groups = layout(shape, group_size)
    codes = codes.reshape(rows, last)
    width = groups * group_size
    if width != last:  # a shorter last group: pad the row to whole groups, cut after
        codes = torch.cat([codes, codes.new_zeros(rows, width - last)], dim=1)
    x = codes.float().reshape(rows, groups, group_size)
    x.mul_(scales.float().reshape(rows, groups, 1)).add_(zeros.float().reshape(rows, groups, 1))
    return x.reshape(rows, width)[:, :last].reshape(shape).contiguous()


def group_bound(t: torch.Tensor, q: QuantizedTensor) -> torch.Tensor:
    """The per-value error bound s/2 of each value's group (fp32, shape of ``t``)."""
    rows, last, _ = layout(q.shape, q.group_size)
    return (_expand(q.scales, q.group_size, last) / 2).reshape(t.shape)
