"""Bytes and error of quantized task vectors (TVQ / RTVQ) vs fp32 τ and the ΘD checkpoint.

    python benchmarks/tvq_storage.py [--model ../shared/models/all-MiniLM-L6-v2] [--group-size 128]

Two cases, both with the CLI defaults (1-D tensors and tensors under 4096 values stay fp16):

- ``quickstart``: τ = ΘD − Θ0 of the quickstart's tiny BERTs (real checkpoints, random weights);
- ``synthetic``: τ on the shapes of ``--model`` (default MiniLM-L6) with Gaussian values,
  τ_i = c + e_i (a shared and an individual part of equal scale, as vectors fine-tuned from one
  Θ0 share structure). The ΘD checkpoint is ``--model``'s model.safetensors. The value
  distribution is synthetic, so errors are indicative; bytes depend only on the shapes.

Per precision: bytes on disk, ratio vs the ΘD checkpoint and vs fp32 τ, relative error
‖τ − τ̂‖/‖τ‖ per tensor (median, max), and the time to read + dequantize every tensor (the
cost the streaming merge and the α sweep pay once per τ) vs reading fp32 τ, same run.
RTVQ for n = 2..4 vectors: bytes per vector = offset + base/n.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _triplets import SHARED  # noqa: E402

from mergekit_ir.merging.checkpoint import _SafetensorsFile, open_checkpoint  # noqa: E402
from mergekit_ir.merging.quantized_store import QuantSpec, save_quantized  # noqa: E402
from mergekit_ir.merging.residual import save_residual  # noqa: E402
from mergekit_ir.merging.task_vector import TaskVector  # noqa: E402


class Synthetic:
    """τ_i = c + e_i on a checkpoint's shapes, generated per tensor (nothing held in memory)."""

    dense = True

    def __init__(self, shapes: dict[str, tuple[int, ...]], index: int, scale: float = 1e-3):
        self.shapes, self.index, self.scale = shapes, index, scale

    def keys(self) -> list[str]:
        return list(self.shapes)

    def shape(self, key: str) -> tuple[int, ...] | None:
        return self.shapes.get(key)

    def get(self, key: str) -> torch.Tensor | None:
        seed = hash(key) % 2**31
        shared = torch.randn(self.shapes[key], generator=torch.Generator().manual_seed(seed))
        own = torch.randn(
            self.shapes[key], generator=torch.Generator().manual_seed(seed + 1000 * self.index + 1)
        )
        return (shared + own) * self.scale

    def describe(self) -> str:
        return f"synthetic{self.index}"


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*.safetensors"))


def _errors(path: Path) -> list[float]:
    return [
        v[0] for v in json.loads((path / "task_vector.json").read_text())["tvq_errors"].values()
    ]


def _quant_errors(path: Path) -> list[float]:
    """Errors of the quantized tensors only (fp16 ones are ~1e-4 and would hide the median)."""
    meta = _SafetensorsFile(path / "task_vector.safetensors").metadata
    kinds = json.loads(meta["tvq_tensors"])
    errs = json.loads((path / "task_vector.json").read_text())["tvq_errors"]
    return [errs[k][0] for k, v in kinds.items() if v["kind"] == "q"]


def _read_all(path: Path) -> float:
    """Best of 3 (files in page cache after the first): the machine is shared and noisy."""
    tv = TaskVector.load(path)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for k in tv.keys():
            tv.get(k)
        best = min(best, time.perf_counter() - start)
    return best


def case(name: str, taus: list[TaskVector], ckpt_bytes: int, root: Path, gs: int) -> None:
    tau = taus[0]
    root.mkdir()
    fp32 = tau.save(root / "fp32")
    fp16 = tau.save(root / "fp16", dtype=torch.float16)
    fp32_bytes, t_fp32 = _size(fp32), _read_all(fp32)
    print(f"\n### {name}: ΘD checkpoint {ckpt_bytes / 1e6:.2f} MB, group size {gs}\n")
    print(
        "| τ | MB | vs ΘD | vs fp32 τ | rel. error median (quantized tensors) | max | read+dequant vs fp32 |"
    )
    print("|---|---|---|---|---|---|---|")

    def row(label: str, path: Path, nbytes: int, errs: list[float] | None) -> None:
        e = f"{statistics.median(errs):.4f} | {max(errs):.4f}" if errs else "0 | 0"
        t = _read_all(path) / t_fp32
        print(
            f"| {label} | {nbytes / 1e6:.3f} | {nbytes / ckpt_bytes:.1%} | "
            f"{nbytes / fp32_bytes:.1%} | {e} | {t:.2f}× |"
        )

    row("fp32", fp32, fp32_bytes, None)
    f16 = [
        ((TaskVector.load(fp16).get(k) - tau.get(k)).norm() / tau.get(k).norm()).item()
        for k in tau.keys()
    ]
    row("fp16", fp16, _size(fp16), f16)
    for bits in (8, 4, 3, 2):
        p = save_quantized(tau, root / f"tvq{bits}", QuantSpec(bits, gs))
        row(f"TVQ {bits}-bit", p, _size(p), _quant_errors(p))
    for n in range(2, len(taus) + 1):
        out = root / f"rtvq{n}"
        paths = save_residual(
            [(f"v{i}", t) for i, t in enumerate(taus[:n])], out, 3, QuantSpec(2, gs)
        )
        per_vector = _size(paths[0]) + _size(out / "base") / n
        errs = [e for p in paths for e in _quant_errors(p)]
        row(f"RTVQ 3+2-bit, n={n} (per vector)", paths[0], int(per_vector), errs)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", type=Path, default=SHARED / "models" / "all-MiniLM-L6-v2")
    ap.add_argument("--group-size", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from safetensors.torch import load_file

    from mergekit_ir.references import quickstart
    from mergekit_ir.references.tiny_models import save_bert, word_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        qs = quickstart.ensure(root / "cache")
        pre = open_checkpoint(str(qs / "pretrained"))
        state = load_file(qs / "pretrained" / "model.safetensors")
        domains = [qs / "domain"] + [
            save_bert(
                root / f"d{i}",
                word_tokenizer(quickstart.vocabulary()),
                10 + i,
                base_state=state,
                noise=0.05,
            )
            for i in range(3)
        ]
        taus = [TaskVector.from_checkpoints(pre, open_checkpoint(str(d))) for d in domains]
        ckpt = (qs / "domain" / "model.safetensors").stat().st_size
        case(
            "quickstart (tiny BERTs; τ_2..4 from extra synthetic domains)",
            taus,
            ckpt,
            root / "q",
            args.group_size,
        )
        if (args.model / "model.safetensors").is_file():
            src = _SafetensorsFile(args.model / "model.safetensors")
            shapes = {
                k: src.info(k).shape for k in src.entries if src.info(k).dtype.is_floating_point
            }
            taus = [TaskVector([(1.0, Synthetic(shapes, i))]) for i in range(4)]
            ckpt = (args.model / "model.safetensors").stat().st_size
            case(
                f"synthetic τ on {args.model.name} shapes", taus, ckpt, root / "s", args.group_size
            )
        else:
            print(f"\n{args.model} absent: synthetic case skipped")


if __name__ == "__main__":
    main()
