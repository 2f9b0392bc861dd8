"""SPLADE document encoding: the per-text head vs the full (batch × length × vocab) logits.

    python benchmarks/splade_encode.py [--model ../shared/models/splade-tiny] [--docs 256]

Both paths of the splade scorer on the same SciFact documents (title + text, 128 tokens,
batch 32, fp32, CPU), interleaved, best of 2; prints the ratio and the largest weight
difference (the per-text path takes the max over tokens before log(1 + ReLU), which is
monotone, so the weights are the same).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import mergekit_ir_plugins.scorers.splade as splade
from mergekit_ir.params import check_params
from mergekit_ir.plugin_host import catalog
from mergekit_ir.scoring.scorer import ScoringSettings

SHARED = Path(__file__).resolve().parents[2] / "shared"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(SHARED / "models" / "splade-tiny"))
    ap.add_argument("--corpus", default=str(SHARED / "data" / "beir" / "scifact" / "corpus.jsonl"))
    ap.add_argument("--docs", type=int, default=256)
    args = ap.parse_args()
    with open(args.corpus) as f:
        docs = [json.loads(line) for _, line in zip(range(args.docs), f, strict=False)]
    texts = [d["title"] + " " + d["text"] for d in docs]
    kind = catalog().scorer("splade")
    options = check_params(kind.params, {"max_length": 128}, "scorer", "splade")
    settings = ScoringSettings(device="cpu", dtype="fp32", batch_size=32, show_progress=False)
    scorer = kind.load(Path(args.model), options, settings)
    head_finder = splade.mlm_head
    times: dict[str, list[float]] = {"full logits": [], "per-text head": []}
    weights = {}
    for _ in range(2):
        for mode in times:
            splade.mlm_head = head_finder if mode == "per-text head" else (lambda _m: None)
            start = time.perf_counter()
            weights[mode] = scorer.encode(texts, 128, "documents")
            times[mode].append(time.perf_counter() - start)
    splade.mlm_head = head_finder
    full, per_text = min(times["full logits"]), min(times["per-text head"])
    diff = (weights["full logits"] - weights["per-text head"]).abs().max().item()
    print(
        f"{len(texts)} documents: full logits {full:.2f}s, per-text head {per_text:.2f}s, "
        f"speed-up {full / per_text:.2f}x, max |Δw| {diff:.1e}"
    )


if __name__ == "__main__":
    main()
