"""A cheap test that a tensor holds no NaN or ±Inf (merges must never write them silently)."""

from __future__ import annotations

import math

import torch


def all_finite(t: torch.Tensor) -> bool:
    """``torch.isfinite(t).all()`` without its tensor-sized bool temporary.

    A NaN or ±Inf makes the sum non-finite, so a finite sum (one fast read-only pass) proves
    every element finite; only a non-finite sum (NaN/Inf, or finite values overflowing the
    sum) needs the exact elementwise check. fp16 and bf16 are summed in fp32: an fp16 sum
    overflows past 65504 and would send most fp16 blocks to the slow check (20× the time).
    """
    if not t.is_floating_point():
        return True
    acc = torch.float32 if t.element_size() < 4 else t.dtype
    if math.isfinite(t.sum(dtype=acc).item()):
        return True
    return bool(torch.isfinite(t).all())
