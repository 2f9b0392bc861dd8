"""Merge time from a stored 4-bit τ vs from Θ0 + ΘD, against the measured I/O limit.

    python benchmarks/tvq_merge_time.py [--model ../shared/models/all-MiniLM-L6-v2] [--bits 4]

Triplet: ``--model`` as ΘT with Θ0, ΘD perturbations beside it (benchmarks/_triplets.py; speed
only). Same run, best of 3 each, inputs in page cache:

- **I/O limit (Θ0 + ΘD)**: read ΘT, Θ0, ΘD files, write + fsync the output's bytes;
- **I/O limit (τ)**: read ΘT and the stored τ, write + fsync the output's bytes;
- ``merge_to_folder`` (what ``mergeir merge`` runs) from Θ0 + ΘD, from the fp32 τ and the
  quantized τ, sequential and with reads/compute overlapped with writes (``overlap``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _triplets import SHARED, perturbed_triplet  # noqa: E402

from mergekit_ir.merging.checkpoint import open_checkpoint  # noqa: E402
from mergekit_ir.merging.engine import MergeJob, merge_to_folder  # noqa: E402
from mergekit_ir.merging.quantized_store import QuantSpec, save_quantized  # noqa: E402
from mergekit_ir.merging.task_vector import TaskVector  # noqa: E402
from mergekit_ir.plugin_host import catalog  # noqa: E402


def io_limit(inputs: list[Path], out_bytes: int, out: Path) -> float:
    start = time.perf_counter()
    for p in inputs:
        with p.open("rb", buffering=0) as f:
            while f.read(16 * 2**20):
                pass
    chunk = b"\0" * (16 * 2**20)
    with out.open("wb") as f:
        left = out_bytes
        while left > 0:
            f.write(chunk[: min(left, len(chunk))])
            left -= len(chunk)
        f.flush()
        os.fsync(f.fileno())
    out.unlink()
    return time.perf_counter() - start


def best(fn, n: int = 3) -> float:
    return min(_timed(fn) for _ in range(n))


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", type=Path, default=SHARED / "models" / "all-MiniLM-L6-v2")
    ap.add_argument("--bits", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = perturbed_triplet(args.model, root)
        pre, dom = open_checkpoint(str(t["pretrained"])), open_checkpoint(str(t["domain"]))
        tau = TaskVector.from_checkpoints(pre, dom)
        fp32 = tau.save(root / "tau32")
        q = save_quantized(tau, root / "tauq", QuantSpec(args.bits))
        ir = open_checkpoint(str(t["ir"]))
        mm = catalog().merge_method("task_arithmetic")
        weights = lambda p: [p / "model.safetensors"]  # noqa: E731
        out_bytes = (t["ir"] / "model.safetensors").stat().st_size
        rows = {
            "I/O limit, Θ0 + ΘD": best(
                lambda: io_limit(
                    weights(t["ir"]) + weights(t["pretrained"]) + weights(t["domain"]),
                    out_bytes,
                    root / "sink",
                )
            ),
            f"I/O limit, {args.bits}-bit τ": best(
                lambda: io_limit(
                    weights(t["ir"]) + [q / "task_vector.safetensors"], out_bytes, root / "sink"
                )
            ),
        }
        for label, vec in (
            ("merge from Θ0 + ΘD", tau),
            ("merge from fp32 τ", TaskVector.load(fp32)),
            (f"merge from {args.bits}-bit τ", TaskVector.load(q)),
        ):
            job = MergeJob(ir, [vec], mm, {"alpha": 0.5, "weights": None})
            for overlap in (False, True):
                rows[f"{label}{', overlapped' if overlap else ''}"] = best(
                    lambda j=job, o=overlap: merge_to_folder(
                        j, root / "m", overwrite=True, progress=False, overlap=o
                    )
                )
        base = rows["merge from Θ0 + ΘD"]
        print(
            f"{args.model.name} (fp32, {out_bytes / 1e6:.0f} MB per checkpoint), 1 thread, best of 3"
        )
        print("| what | seconds | vs merge from Θ0 + ΘD |")
        print("|---|---:|---:|")
        for label, s in rows.items():
            print(f"| {label} | {s:.3f} | {s / base:.2f} |")


if __name__ == "__main__":
    main()
