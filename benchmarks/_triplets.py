"""A synthetic but real-sized triplet around a real checkpoint, for benchmarks.

ΘT is a real model folder; Θ0 = ΘT − noise and ΘD = Θ0 + noise are written beside
it with the same config and tokenizer, so merging and scoring do real work on
real shapes. Numbers from such a triplet measure speed, not effectiveness.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

SHARED = Path(__file__).resolve().parents[2] / "shared"


def perturbed_triplet(source: Path, root: Path, noise: float = 0.01) -> dict[str, Path]:
    """Copy ``source`` as ΘT and write Θ0, ΘD perturbations next to it."""
    out = {}
    weights = load_file(source / "model.safetensors")
    gen = torch.Generator().manual_seed(0)
    for name, sign in (("ir", 0.0), ("pretrained", -1.0), ("domain", -0.5)):
        folder = root / name
        if not folder.exists():
            shutil.copytree(source, folder)
            if sign:
                state = {
                    k: (
                        v + sign * noise * torch.randn(v.shape, generator=gen).to(v.dtype)
                        if v.is_floating_point()
                        else v
                    )
                    for k, v in weights.items()
                }
                save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
        out[name] = folder
    return out
