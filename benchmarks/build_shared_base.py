"""Build ΘT for a shared-base real triplet: Θ0 fine-tuned for retrieval on out-of-domain pairs.

    python benchmarks/build_shared_base.py --out /tmp/mergeir-shootout/minilm-ir \
        [--steps 60 --batch-size 32 --lr 5e-5 --base ../shared/models/all-MiniLM-L6-v2]

Θ0 = all-MiniLM-L6-v2 (``--base``). ΘT = Θ0 fine-tuned with sentence-transformers' own trainer
(``SentenceTransformerTrainer``, ``MultipleNegativesRankingLoss``, in-batch negatives, a
no-duplicates batch sampler so two questions on one sentence never meet as negatives) on
XQuAD-R English (question, answer sentence) pairs built from the BEIR-style folder's qrels
(``../shared/data/beir/xquad-r/en``: ``queries.jsonl``, ``corpus.jsonl``, ``qrels/test.tsv``).
XQuAD-R is Wikipedia QA — out of domain for SciFact and NFCorpus.

The last ``--holdout-articles`` XQuAD articles are kept out of training; before and after
training their questions are run against the whole English sentence pool (1,180 sentences) and
MRR@10 / Recall@1 printed, so the script says whether ΘT learnt anything. ΘT is written as a
sentence-transformers folder (``SentenceTransformer(out)`` loads it; the ``bi-encoder`` scorer
reads it) with ``build.json`` beside the weights: settings, pair counts, hold-out numbers,
‖τT‖ = ‖ΘT − Θ0‖ relative to ‖Θ0‖ and the wall time. ``--out`` may not lie inside the repo.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_xquad_r(folder: Path) -> tuple[dict, dict, list[tuple[str, str]]]:
    """(queries id → text, corpus id → record, [(query id, sentence id)]) from the qrels."""
    queries = {q["_id"]: q["text"] for q in read_jsonl(folder / "queries.jsonl")}
    corpus = {d["_id"]: d for d in read_jsonl(folder / "corpus.jsonl")}
    qrels: list[tuple[str, str]] = []
    with (folder / "qrels" / "test.tsv").open(encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            if int(row["score"]) > 0 and row["query-id"] in queries and row["corpus-id"] in corpus:
                qrels.append((row["query-id"], row["corpus-id"]))
    return queries, corpus, qrels


def holdout_eval(model, queries, corpus, pairs, batch_size: int = 64) -> dict[str, float]:
    """MRR@10 and Recall@1 of ``pairs``' questions against the whole sentence pool."""
    import torch

    if not pairs:
        return {}
    doc_ids = list(corpus)
    docs = model.encode(
        [corpus[d]["text"] for d in doc_ids],
        batch_size=batch_size,
        convert_to_tensor=True,
        normalize_embeddings=True,
    )
    qs = model.encode(
        [queries[q] for q, _ in pairs],
        batch_size=batch_size,
        convert_to_tensor=True,
        normalize_embeddings=True,
    )
    top = torch.topk(qs @ docs.T, k=10, dim=1).indices.tolist()
    mrr = r1 = 0.0
    for (_, rel), ranked in zip(pairs, top, strict=True):
        ids = [doc_ids[i] for i in ranked]
        if rel in ids:
            mrr += 1.0 / (ids.index(rel) + 1)
            r1 += ids[0] == rel
    return {"queries": len(pairs), "MRR@10": mrr / len(pairs), "R@1": r1 / len(pairs)}


def relative_drift(base: Path, out: Path) -> float:
    """‖ΘT − Θ0‖ / ‖Θ0‖ over the transformer's floating tensors."""
    from safetensors.torch import load_file

    a, b = load_file(str(base / "model.safetensors")), load_file(str(out / "model.safetensors"))
    num = den = 0.0
    for k, v in a.items():
        key = k if k in b else f"model.{k}" if f"model.{k}" in b else None
        if key is None or not v.is_floating_point():
            continue
        num += float((b[key].float() - v.float()).pow(2).sum())
        den += float(v.float().pow(2).sum())
    return (num / den) ** 0.5 if den else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="ΘT folder to write (outside the repo)")
    ap.add_argument("--base", type=Path, default=SHARED / "models" / "all-MiniLM-L6-v2", help="Θ0")
    ap.add_argument("--data", type=Path, default=SHARED / "data" / "beir" / "xquad-r" / "en")
    ap.add_argument("--steps", type=int, default=60, help="optimizer steps (default 60)")
    ap.add_argument("--batch-size", type=int, default=32, help="pairs per batch (default 32)")
    ap.add_argument("--lr", type=float, default=5e-5, help="peak learning rate (default 5e-5)")
    ap.add_argument("--warmup-ratio", type=float, default=0.1)
    ap.add_argument(
        "--max-length", type=int, default=128, help="token limit per text (default 128)"
    )
    ap.add_argument("--scale", type=float, default=20.0, help="MNRL similarity scale (its default)")
    ap.add_argument(
        "--holdout-articles",
        type=int,
        default=8,
        help="last N XQuAD articles kept out of training and evaluated (0: none)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args()

    out = args.out.resolve()
    if out == REPO or REPO in out.parents:
        sys.exit(f"error: --out {out} is inside the repo; write models under /tmp")
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        sys.exit(f"error: {out} exists and is not empty (--overwrite to replace it)")

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )

    try:  # sentence-transformers ≥ 6 moved these (the old paths warn)
        from sentence_transformers.sentence_transformer import losses
        from sentence_transformers.sentence_transformer.training_args import BatchSamplers
    except ImportError:
        from sentence_transformers import losses
        from sentence_transformers.training_args import BatchSamplers

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    queries, corpus, qrels = load_xquad_r(args.data)
    articles: list[str] = []
    for d in corpus.values():
        a = d.get("metadata", {}).get("article", "")
        if a not in articles:
            articles.append(a)
    held = (
        set(articles[len(articles) - args.holdout_articles :]) if args.holdout_articles else set()
    )
    train_pairs = [(q, d) for q, d in qrels if corpus[d]["metadata"]["article"] not in held]
    test_pairs = [(q, d) for q, d in qrels if corpus[d]["metadata"]["article"] in held]
    random.Random(args.seed).shuffle(train_pairs)
    print(
        f"XQuAD-R {args.data.name}: {len(queries)} questions, {len(corpus)} sentences, "
        f"{len(articles)} articles; train {len(train_pairs)} pairs "
        f"({len(articles) - len(held)} articles), hold-out {len(test_pairs)} "
        f"({len(held)} articles)",
        flush=True,
    )
    train = Dataset.from_dict(
        {
            "anchor": [queries[q] for q, _ in train_pairs],
            "positive": [corpus[d]["text"] for _, d in train_pairs],
        }
    )

    model = SentenceTransformer(str(args.base), device="cpu")
    model.max_seq_length = args.max_length
    before = holdout_eval(model, queries, corpus, test_pairs)
    if before:
        print(f"Θ0 hold-out: {before}", flush=True)

    work = out.parent / f".{out.name}.trainer"
    targs = SentenceTransformerTrainingArguments(
        output_dir=str(work),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        warmup_steps=int(round(args.warmup_ratio * args.steps)),
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        seed=args.seed,
        data_seed=args.seed,
        save_strategy="no",
        logging_steps=max(1, args.steps // 10),
        report_to="none",
        use_cpu=True,
        dataloader_drop_last=True,
    )
    trainer = SentenceTransformerTrainer(
        model=model,
        args=targs,
        train_dataset=train,
        loss=losses.MultipleNegativesRankingLoss(model, scale=args.scale),
    )
    t_train = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t_train
    shutil.rmtree(work, ignore_errors=True)

    after = holdout_eval(model, queries, corpus, test_pairs)
    if after:
        print(f"ΘT hold-out: {after}", flush=True)
    if out.exists() and args.overwrite:
        shutil.rmtree(out)
    model.save(str(out))
    drift = relative_drift(args.base, out)
    info = {
        "theta_0": str(args.base),
        "data": str(args.data),
        "loss": "MultipleNegativesRankingLoss",
        "batch_sampler": "no_duplicates",
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "warmup_ratio": args.warmup_ratio,
        "max_length": args.max_length,
        "scale": args.scale,
        "seed": args.seed,
        "train_pairs": len(train_pairs),
        "epochs": args.steps * args.batch_size / max(1, len(train_pairs)),
        "holdout_articles": sorted(held),
        "holdout_theta_0": before,
        "holdout_theta_t": after,
        "relative_drift": drift,
        "train_s": round(train_s, 1),
        "total_s": round(time.perf_counter() - t0, 1),
        "torch_threads": torch.get_num_threads(),
    }
    (out / "build.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    print(
        f"wrote {out}: {args.steps} steps × {args.batch_size} pairs "
        f"({info['epochs']:.1f} epochs) in {train_s:.0f} s; ‖ΘT − Θ0‖/‖Θ0‖ = {drift:.4f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
