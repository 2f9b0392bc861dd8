"""Write a control ΘD: a checkpoint folder equal to ΘT plus Gaussian noise (a harmful "domain
vector" for the do-no-harm guard, docs/alpha-selection.md).

    python scripts/noise_vector.py /work/shared/models/all-MiniLM-L6-v2 /tmp/minilm-noise --scale 0.5

Every floating tensor t gets ``scale * t.std() * N(0, 1)`` (seed 0); other files are copied.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--scale", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    shutil.copytree(args.src, args.dst, dirs_exist_ok=True)
    state = load_file(args.src / "model.safetensors")
    gen = torch.Generator().manual_seed(args.seed)
    out = {}
    for name in sorted(state):
        t = state[name]
        if t.is_floating_point() and t.numel() > 1:
            t = t + args.scale * t.float().std() * torch.randn(t.shape, generator=gen).to(t.dtype)
        out[name] = t.contiguous()
    save_file(out, str(args.dst / "model.safetensors"), metadata={"format": "pt"})


if __name__ == "__main__":
    main()
