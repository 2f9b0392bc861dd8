"""In-place α sweep from a quantized τ: dequantize once at the start, or per α?

    python benchmarks/tvq_sweep_cost.py [--model ../shared/models/all-MiniLM-L6-v2] [--bits 4]

ΘT is ``--model`` loaded with transformers; τ is synthetic Gaussian on its shapes (speed only),
saved fp32 and at ``--bits``. Measures, same run: building the sweep (reads τ once onto the
device: fp32 read vs read + dequantize), one ``apply`` (one α), and reading + dequantizing all
of τ — what dequantizing per α would add to every α.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _triplets import SHARED  # noqa: E402
from tvq_storage import Synthetic  # noqa: E402

from mergekit_ir.merging.checkpoint import _SafetensorsFile, open_checkpoint  # noqa: E402
from mergekit_ir.merging.engine import MergeJob, build_plan  # noqa: E402
from mergekit_ir.merging.quantized_store import QuantSpec, save_quantized  # noqa: E402
from mergekit_ir.merging.sweep import InPlaceSweep  # noqa: E402
from mergekit_ir.merging.task_vector import TaskVector  # noqa: E402
from mergekit_ir.plugin_host import catalog  # noqa: E402


def _best(fn, n: int = 3) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", type=Path, default=SHARED / "models" / "all-MiniLM-L6-v2")
    ap.add_argument("--bits", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from transformers import AutoModel

    src = _SafetensorsFile(args.model / "model.safetensors")
    shapes = {k: src.info(k).shape for k in src.entries if src.info(k).dtype.is_floating_point}
    tau = TaskVector([(1.0, Synthetic(shapes, 0))])
    model = AutoModel.from_pretrained(args.model).eval()
    ir = open_checkpoint(str(args.model))
    mm = catalog().merge_method("task_arithmetic")
    with tempfile.TemporaryDirectory() as tmp:
        paths = {
            "fp32": tau.save(Path(tmp) / "fp32"),
            f"{args.bits}-bit": save_quantized(tau, Path(tmp) / "q", QuantSpec(args.bits)),
        }
        print(f"{args.model.name}, CPU, 1 thread; best of 3")
        print("| τ | build sweep (s) | one α apply (s) | read+dequant all of τ (s) |")
        print("|---|---:|---:|---:|")
        for label, path in paths.items():
            v = TaskVector.load(path)
            job = MergeJob(ir, [v], mm, {"alpha": 1.0, "weights": None})
            plan = build_plan(job)
            build = _best(lambda v=v, j=job, p=plan: InPlaceSweep(model, j, p), 2)
            sweep = InPlaceSweep(model, job, plan)
            apply = _best(lambda s=sweep: s.apply({"alpha": 0.5}))
            sweep.restore()
            read = _best(lambda v=v: [v.get(k) for k in v.keys()])
            print(f"| {label} | {build:.3f} | {apply:.3f} | {read:.3f} |")


if __name__ == "__main__":
    main()
