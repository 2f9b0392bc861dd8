"""Retrieval quality of Θ'(α) merged from quantized task vectors (TVQ / RTVQ) vs fp32 τ.

    python benchmarks/tvq_quality.py [--group-size 128]                  # the quickstart
    python benchmarks/tvq_quality.py --pretrained P --domain D --domain2 D2 \
        --scorer "{kind: splade, max_length: 128}" --beir ../shared/data/beir/scifact \
        --test "test[:50]" --dev "train[:25]" --alpha 0.5,1 --k 20 --cache-dir C  # real weights

Runs the experiment protocol (BM25 top-k, re-rank, α tuned on dev NDCG@10, fused with BM25,
evaluate on test) once per precision of τ = ΘD − Θ0: the checkpoint itself (baseline, same
run), fp32 and fp16 saved τ, TVQ at 8/4/3/2 bits and RTVQ (3-bit base + 2-bit offsets over τ
and a second domain vector sharing Θ0: ``--domain2``, else a synthetic one on the quickstart).
All 2-D tensors are quantized (--keep-full-below 0) so precision is not hidden by fp16
fallbacks. Reports test NDCG@10 at α = 1 and at the tuned α, Δ vs the checkpoint, and the
tuned α. Θ0 is ΘT unless ``--ir`` names another checkpoint.

The quickstart models are tiny random BERTs: there the numbers test the plumbing and the size
of quantization noise relative to the α effect, not the quality of a real domain vector.
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

from mergekit_ir.merging.checkpoint import open_checkpoint
from mergekit_ir.merging.quantized_store import QuantSpec, save_quantized
from mergekit_ir.merging.residual import save_residual
from mergekit_ir.merging.task_vector import TaskVector
from mergekit_ir.references import quickstart
from mergekit_ir.references.tiny_models import save_bert, word_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--pretrained", help="Θ0 folder (default: the quickstart's)")
    ap.add_argument("--ir", help="ΘT folder (default: Θ0 with --pretrained, else the quickstart's)")
    ap.add_argument("--domain", help="ΘD folder (default: the quickstart's)")
    ap.add_argument("--domain2", help="a second ΘD on the same Θ0, for RTVQ")
    ap.add_argument("--scorer", default="{kind: bi-encoder, pooling: mean, similarity: cosine}")
    ap.add_argument("--beir", help="a BEIR folder (default: the quickstart's toy collection)")
    ap.add_argument("--test", default="test")
    ap.add_argument("--dev", default="dev")
    ap.add_argument("--alpha", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--cache-dir", help="run cache (default: a temporary one)")
    ap.add_argument("--keep", help="keep the vectors, registry and run here")
    args = ap.parse_args()
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        root.mkdir(parents=True, exist_ok=True)
        cache = Path(args.cache_dir) if args.cache_dir else root / "cache"
        if args.pretrained:
            pre_ref = str(Path(args.pretrained).resolve())
            ir_ref = str(Path(args.ir).resolve()) if args.ir else pre_ref
            dom_ref = str(Path(args.domain).resolve())
            pre = open_checkpoint(pre_ref)
            tau = TaskVector.from_checkpoints(pre, open_checkpoint(dom_ref))
            tau2 = (
                TaskVector.from_checkpoints(pre, open_checkpoint(str(Path(args.domain2).resolve())))
                if args.domain2
                else None
            )
            beir = str(Path(args.beir).resolve())
            label = f"{Path(ir_ref).name} on {Path(beir).name} {args.test}"
        else:
            qs = quickstart.ensure(cache)
            pre_ref, ir_ref, dom_ref = (
                "quickstart:pretrained",
                "quickstart:ir",
                "quickstart:domain",
            )
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
            beir = "quickstart:toy"
            label = "quickstart (tiny random BERTs)"
        vectors: dict[str, Path] = {}
        vectors["fp32"] = tau.save(root / "fp32")
        vectors["fp16"] = tau.save(root / "fp16", dtype=torch.float16)
        for bits in (8, 4, 3, 2):
            spec = QuantSpec(bits, args.group_size, None, 0)
            vectors[f"tvq{bits}"] = save_quantized(tau, root / f"tvq{bits}", spec)
        if tau2 is not None:
            rtvq = save_residual(
                [("bio", tau), ("other", tau2)],
                root / "rtvq",
                base_bits=3,
                spec=QuantSpec(2, args.group_size, None, 0),
            )
            vectors["rtvq3+2"] = rtvq[0]
        lines = [
            "datasets:",
            f"  data: {{beir: '{beir}', test: '{args.test}', dev: '{args.dev}'}}",
            "triplets:",
        ]
        common = f"scorer: {args.scorer}, pretrained: '{pre_ref}', ir: '{ir_ref}'"
        lines.append(f"  ckpt: {{{common}, domain: '{dom_ref}'}}")
        for name, path in vectors.items():
            lines.append(
                f"  {name.replace('+', '_')}: {{{common}, domain: {{task_vector: '{path}'}}}}"
            )
        names = ["ckpt", *(n.replace("+", "_") for n in vectors)]
        lines += [
            "experiments:",
            "  tvq:",
            f"    triplets: [{', '.join(names)}]",
            "    datasets: [data]",
            f"    merge: {{method: task_arithmetic, alpha: [{args.alpha}]}}",
            f"    first_stage: {{backend: bm25s, k: {args.k}}}",
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
        print(f"{label}, group size {args.group_size}, BM25 top-{args.k}, run {seconds:.0f}s")
        print("| τ | test NDCG@10 α=1 | Δ | tuned α | test NDCG@10 tuned | Δ |")
        print("|---|---|---|---|---|---|")
        ref: tuple[float, float] | None = None
        for section in results["sections"]:
            rows = {r["key"]: r for r in section["rows"]}
            at1 = rows["merged@1"]["cells"]["data"]["NDCG@10"]["mean"]
            best = rows["merged@best"]["cells"]["data"]["NDCG@10"]["mean"]
            alpha = results["alpha_ablation"][section["triplet"]]["best"]
            ref = ref or (at1, best)
            print(
                f"| {section['triplet']} | {at1:.4f} | {at1 - ref[0]:+.4f} | {alpha} | "
                f"{best:.4f} | {best - ref[1]:+.4f} |"
            )


if __name__ == "__main__":
    main()
