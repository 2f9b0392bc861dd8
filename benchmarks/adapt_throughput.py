"""Training throughput of `mergeir adapt`'s loop vs a plain transformers.Trainer MLM script,
and peak memory of LoRA vs full adaptation.

Same model (splade-tiny, a real BERT MLM), same packed SciFact blocks, same batch, sequence
length, optimizer (AdamW), masking (DataCollatorForLanguageModeling, 15 %) and step count. Each
variant runs in its own subprocess (clean peak RSS), interleaved and repeated; the best
tokens/s of each is compared, as a ratio, in the same run.

    python benchmarks/adapt_throughput.py [--steps 15] [--batch-size 16] [--max-length 128] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"
MODEL = SHARED / "models" / "splade-tiny"
CORPUS = SHARED / "data" / "beir" / "scifact" / "corpus.jsonl"


def blocks(max_length: int, n_docs: int = 1500):
    from transformers import AutoTokenizer

    from mergekit_ir.adaptation.corpus import Corpus, _read_jsonl, packed_blocks

    texts = _read_jsonl(CORPUS)[:n_docs]
    tok = AutoTokenizer.from_pretrained(MODEL)
    corpus = Corpus("scifact[:1500]", texts, "bench")
    return tok, packed_blocks(corpus, tok, MODEL, "mlm", max_length, None)


def run_ours(args, lora: bool) -> dict:
    import torch

    from mergekit_ir.adaptation.training import AdaptSettings, LoraSpec, train

    tok, data = blocks(args.max_length)
    settings = AdaptSettings(
        steps=args.steps,
        max_length=args.max_length,
        batch_size=args.batch_size,
        lr=5e-5,
        warmup=0,
        lora=LoraSpec(r=16, alpha=32, targets=("query", "value")) if lora else None,
    )
    res = train(MODEL, data, tok, "mlm", settings, torch.device("cpu"), show_progress=False)
    tokens = args.steps * args.batch_size * args.max_length
    return {"tokens_per_s": tokens / res.seconds, "seconds": res.seconds}


def run_trainer(args) -> dict:
    import torch
    from transformers import (
        AutoModelForMaskedLM,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainingArguments,
    )

    tok, data = blocks(args.max_length)
    dataset = [{"input_ids": row} for row in data.tolist()]
    torch.manual_seed(0)
    model = AutoModelForMaskedLM.from_pretrained(MODEL)
    targs = TrainingArguments(
        output_dir="/tmp/adapt-bench-trainer",
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=5e-5,
        weight_decay=0.01,
        max_grad_norm=1.0,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        dataloader_num_workers=0,
        use_cpu=True,
        disable_tqdm=True,
    )
    collator = DataCollatorForLanguageModeling(tok, mlm=True, mlm_probability=0.15)
    trainer = Trainer(model=model, args=targs, train_dataset=dataset, data_collator=collator)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    tokens = args.steps * args.batch_size * args.max_length
    return {"tokens_per_s": tokens / seconds, "seconds": seconds}


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    out = run_trainer(args) if args.mode == "trainer" else run_ours(args, args.mode == "lora")
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--mode", choices=["ours", "trainer", "lora"])
    args = p.parse_args()
    if args.mode:
        return child(args)
    if not MODEL.is_dir() or not CORPUS.is_file():
        sys.exit(f"needs {MODEL} and {CORPUS}")
    results: dict[str, list[dict]] = {"ours": [], "trainer": [], "lora": []}
    for _ in range(args.repeats):
        for mode in results:
            cmd = [sys.executable, __file__, "--mode", mode, *sys.argv[1:]]
            line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            results[mode].append(json.loads(line.strip().splitlines()[-1]))
    best = {m: max(r["tokens_per_s"] for r in rs) for m, rs in results.items()}
    peak = {m: min(r["peak_rss_mb"] for r in rs) for m, rs in results.items()}
    print(
        f"splade-tiny MLM, batch {args.batch_size} × {args.max_length} tokens, {args.steps} steps, "
        f"{args.threads} threads, best of {args.repeats}"
    )
    print("| loop | tokens/s | ratio vs Trainer | peak RSS (MB) |")
    print("|---|---:|---:|---:|")
    for m, label in (
        ("ours", "mergeir adapt (full)"),
        ("lora", "mergeir adapt (LoRA r=16 q,v)"),
        ("trainer", "transformers.Trainer (full)"),
    ):
        print(f"| {label} | {best[m]:.0f} | {best[m] / best['trainer']:.2f}× | {peak[m]:.0f} |")
    print(f"LoRA / full peak RSS: {peak['lora'] / peak['ours']:.2f}×")


if __name__ == "__main__":
    main()
