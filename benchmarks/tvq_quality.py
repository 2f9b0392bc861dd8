"""Retrieval quality of Θ'(α) merged from quantized task vectors (TVQ / RTVQ) vs fp32 τ.

    python benchmarks/tvq_quality.py [--group-size 128]

Runs the quickstart protocol (BM25 top-100 on the toy collection, re-rank, α tuned on dev
NDCG@10, evaluate on test) once per precision of τ = ΘD − Θ0: the checkpoint itself
(baseline, same run), fp32 and fp16 saved τ, TVQ at 8/4/3/2 bits and RTVQ (3-bit base +
2-bit offsets over τ and a second synthetic domain vector sharing Θ0). All 2-D tensors are
quantized (--keep-full-below 0) so precision is not hidden by fp16 fallbacks. Reports test
NDCG@10 at α = 1 and at the tuned α, Δ vs the fp32 checkpoint, and the tuned α.

The quickstart models are tiny random BERTs: the numbers test the plumbing and the size of
quantization noise relative to the α effect, not the quality of a real domain vector.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from safetensors.torch import load_file

from mergekit_ir.experiments import quickstart
from mergekit_ir.experiments.tiny_models import save_bert, word_tokenizer
from mergekit_ir.merging.checkpoint import open_checkpoint
from mergekit_ir.merging.quantized_store import QuantSpec, save_quantized, save_residual
from mergekit_ir.merging.task_vector import TaskVector


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--group-size", type=int, default=128)
    args = ap.parse_args()
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cache = root / "cache"
        qs = quickstart.ensure(cache)
        pre = open_checkpoint(str(qs / "pretrained"))
        tau = TaskVector.from_checkpoints(pre, open_checkpoint(str(qs / "domain")))
        state = load_file(qs / "pretrained" / "model.safetensors")
        d2 = save_bert(
            root / "domain2",
            word_tokenizer(quickstart.vocabulary()),
            seed=5,
            base_state=state,
            noise=0.05,
        )
        tau2 = TaskVector.from_checkpoints(pre, open_checkpoint(str(d2)))
        vectors: dict[str, Path] = {}
        vectors["fp32"] = tau.save(root / "fp32")
        vectors["fp16"] = tau.save(root / "fp16", dtype=torch.float16)
        for bits in (8, 4, 3, 2):
            spec = QuantSpec(bits, args.group_size, None, 0)
            vectors[f"tvq{bits}"] = save_quantized(tau, root / f"tvq{bits}", spec)
        rtvq = save_residual(
            [("bio", tau), ("other", tau2)],
            root / "rtvq",
            base_bits=3,
            spec=QuantSpec(2, args.group_size, None, 0),
        )
        vectors["rtvq3+2"] = rtvq[0]
        lines = [
            "datasets:",
            "  quickstart-toy: {beir: 'quickstart:toy', test: test, dev: dev}",
            "triplets:",
        ]
        scorer = "{kind: bi-encoder, pooling: mean, similarity: cosine}"
        common = f"scorer: {scorer}, pretrained: 'quickstart:pretrained', ir: 'quickstart:ir'"
        lines.append(f"  ckpt: {{{common}, domain: 'quickstart:domain'}}")
        for name, path in vectors.items():
            lines.append(
                f"  {name.replace('+', '_')}: {{{common}, domain: {{task_vector: '{path}'}}}}"
            )
        names = ["ckpt", *(n.replace("+", "_") for n in vectors)]
        lines += [
            "experiments:",
            "  tvq:",
            f"    triplets: [{', '.join(names)}]",
            "    datasets: [quickstart-toy]",
            "    merge: {method: task_arithmetic, alpha: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]}",
            "    first_stage: {backend: bm25s, k: 100}",
            "    fusion: {method: wsum, norm: min-max, weights: [0.5, 0.5]}",
            "    metrics: [NDCG@10]",
        ]
        reg = root / "registry.yaml"
        reg.write_text("\n".join(lines) + "\n")
        start = time.perf_counter()
        cmd = [sys.executable, "-m", "mergekit_ir.cli", "run", "tvq", "--registry", str(reg)]
        cmd += ["--out", str(root / "out"), "--cache-dir", str(cache), "-q", "--device", "cpu"]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        results = json.loads((root / "out" / "results.json").read_text())
        print(f"quickstart (tiny random BERTs), group size {args.group_size}, run {seconds:.0f}s")
        print("| τ | test NDCG@10 α=1 | Δ | tuned α | test NDCG@10 tuned | Δ |")
        print("|---|---|---|---|---|---|")
        ref: tuple[float, float] | None = None
        for section in results["sections"]:
            rows = {r["key"]: r for r in section["rows"]}
            at1 = rows["merged@1"]["cells"]["quickstart-toy"]["NDCG@10"]["mean"]
            best = rows["merged@best"]["cells"]["quickstart-toy"]["NDCG@10"]["mean"]
            alpha = results["alpha_ablation"][section["triplet"]]["best"]
            ref = ref or (at1, best)
            print(
                f"| {section['triplet']} | {at1:.4f} | {at1 - ref[0]:+.4f} | {alpha} | "
                f"{best:.4f} | {best - ref[1]:+.4f} |"
            )


if __name__ == "__main__":
    main()
