"""What the data-aware methods cost on a real-sized model: RegMean's statistics pass and its
cache, and AdaMerging's learning, each against a named baseline measured in the same run.

    flock /tmp/mergeir-heavy.lock python benchmarks/data_aware_cost.py \
        [--model ../shared/models/all-MiniLM-L6-v2] [--corpus ../shared/data/beir/scifact] \
        [--texts 256] [--max-length 256] [--batch-size 16] [--threads 2] \
        [--adamerging --queries 8 --steps 4 --candidates 8] [--workdir /tmp/mergeir-data-aware]

The triplet is ``benchmarks/_triplets.py``'s: ΘT the real checkpoint, Θ0 and ΘD perturbations of
it with the same shapes (speed, not effectiveness). Every phase runs in a fresh subprocess that
reports its wall time and peak RSS (``ru_maxrss``):

- ``forward``: the baseline of the statistics pass — ΘT's ``AutoModel`` run over the same
  corpus sample (same tokenizer, truncation and batches), no hooks;
- ``stats-cold``: ``gather_statistics`` for ``input_gram`` (RegMean) with an empty cache: ΘT
  and ΘD, each a forward pass with a pre-hook on every ``nn.Linear``;
- ``stats-warm``: the same call again (cache hit);
- ``merge-ta`` / ``merge-regmean``: the streaming merge to a folder, task arithmetic (the
  baseline) and RegMean from the cached statistics;
- with ``--adamerging``: ``score`` (one re-ranking pass of ΘT over ``--queries`` queries ×
  ``--candidates`` BM25 candidates of the corpus, the baseline) and ``adamerging`` (learning
  block-wise coefficients for ``--steps`` steps of ``--batch-queries`` queries on the entropy
  objective, plain autograd through ``functional_call``).

Prints a Markdown table and the ratios (stats pass / forward, per model; warm / cold; RegMean
merge / task-arithmetic merge; AdaMerging step / scoring pass).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO / "benchmarks"))


def _texts(corpus: Path) -> list[str]:
    rows = [json.loads(line) for line in (corpus / "corpus.jsonl").open() if line.strip()]
    rows.sort(key=lambda r: str(r["_id"]))
    return [f"{r.get('title') or ''} {r.get('text') or ''}".strip() for r in rows]


def _job(tri: dict[str, Path], method: str, params: dict):
    from mergekit_ir.merging.checkpoint import open_checkpoint
    from mergekit_ir.merging.engine import MergeJob, build_plan
    from mergekit_ir.merging.task_vector import TaskVector
    from mergekit_ir.plugin_host import catalog

    ir, pre = open_checkpoint(str(tri["ir"])), open_checkpoint(str(tri["pretrained"]))
    dom = open_checkpoint(str(tri["domain"]))
    job = MergeJob(
        ir, [TaskVector.from_checkpoints(pre, dom)], catalog().merge_method(method), params, pre
    )
    return job, build_plan(job)


def phase(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from mergekit_ir.merging.statistics import STATISTICS, gather_statistics, sample_corpus

    tri = json.loads(args.triplet)
    tri = {k: Path(v) for k, v in tri.items()}
    settings = {
        **STATISTICS.default,
        "texts": args.texts,
        "max_length": args.max_length,
        "batch_size": args.batch_size,
    }
    sample = sample_corpus(_texts(Path(args.corpus)), args.texts, 0, Path(args.corpus).name)
    cache = Path(args.workdir) / "cache"
    out: dict = {"texts": len(sample.texts)}
    start = time.perf_counter()
    if args.phase == "forward":
        from mergekit_ir.merging.statistics import StatisticsRun, load_text_model

        model, tok = load_text_model(tri["ir"], torch.device("cpu"))
        start = time.perf_counter()
        run = StatisticsRun(
            model, tok, sample.texts, args.max_length, args.batch_size, torch.device("cpu")
        )
        with torch.inference_mode():
            for batch in run.batches():
                run.forward(batch)
        out["tokens"] = run.tokens
    elif args.phase in ("stats-cold", "stats-warm"):
        from mergekit_ir.plugin_host import catalog

        job, plan = _job(tri, "regmean", {"statistics": settings})
        lines: list[str] = []
        start = time.perf_counter()
        got = gather_statistics(
            job,
            plan,
            {"input_gram": (catalog().statistic("input_gram"), {})},
            sample,
            settings,
            cache,
            echo=lines.append,
        )
        out.update(hits=got.hits, misses=got.misses, lines=lines)
        metas = [m["input_gram"].meta for m in got.models]
        out["tokens"] = sum(int(m["tokens"]) for m in metas)
        out["accumulator_bytes"] = int(metas[0]["accumulator_bytes"])
        out["stat_seconds"] = [float(m["seconds"]) for m in metas]
    elif args.phase in ("merge-ta", "merge-regmean"):
        from mergekit_ir.merging.engine import merge_to_folder
        from mergekit_ir.plugin_host import catalog

        method = "task_arithmetic" if args.phase == "merge-ta" else "regmean"
        params = {"alpha": 0.5} if method == "task_arithmetic" else {"statistics": settings}
        job, plan = _job(tri, method, params)
        if method == "regmean":
            job.statistics = gather_statistics(
                job,
                plan,
                {"input_gram": (catalog().statistic("input_gram"), {})},
                sample,
                settings,
                cache,
                echo=lambda _: None,
            )
        start = time.perf_counter()
        merge_to_folder(job, Path(args.workdir) / f"out-{method}", overwrite=True, progress=False)
    elif args.phase in ("score", "adamerging"):
        out.update(adamerging_phase(args, tri, start_clock=time.perf_counter))
        return {**out, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    out["seconds"] = time.perf_counter() - start
    out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def adamerging_phase(args: argparse.Namespace, tri: dict[str, Path], start_clock) -> dict:
    """One scoring pass of ΘT (baseline) or AdaMerging's learning, on the same candidates."""
    import torch

    from mergekit_ir.evaluation.datasets import load_beir_folder
    from mergekit_ir.merging.sweep import InPlaceSweep
    from mergekit_ir.plugin_host import catalog
    from mergekit_ir.scoring.scorer import ScoringSettings
    from mergekit_ir.tuning.adamerging import LearnSettings, MergeAccess, Query, learn

    ds = load_beir_folder(Path(args.corpus), "test")
    index = catalog().first_stage("bm25s").build(ds.corpus, {}, None, language="english")
    qids = sorted(ds.queries)[: args.queries]
    cands = index.search({q: ds.queries[q] for q in qids}, args.candidates)
    settings = ScoringSettings("cpu", "fp32", 32, False)
    scorer = catalog().scorer("bi-encoder").load(tri["ir"], {}, settings)
    queries = [
        Query(ds.queries[q], [ds.corpus[d].full_text for d in sorted(cands[q])]) for q in qids
    ]
    start = start_clock()
    if args.phase == "score":
        docs = {d: ds.corpus[d].full_text for q in qids for d in cands[q]}
        scorer.rerank({q: ds.queries[q] for q in qids}, cands, docs)
        return {"seconds": start_clock() - start, "pairs": sum(len(c) for c in cands.values())}
    job, plan = _job(tri, "task_arithmetic", {"alpha": 1.0})
    sweep = InPlaceSweep(scorer.model, job, plan)
    access = MergeAccess(scorer, sweep.slots, "task_arithmetic", None)
    start = start_clock()
    result = learn(
        access,
        queries,
        [],
        LearnSettings(
            steps=args.steps, batch_queries=args.batch_queries, objective="entropy", seed=0
        ),
    )
    torch.set_num_threads(args.threads)
    return {
        "seconds": start_clock() - start,
        "steps": args.steps,
        "pairs_per_step": args.batch_queries * args.candidates,
        "coefficients": len(result.coefficients),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default=str(SHARED / "models" / "all-MiniLM-L6-v2"))
    p.add_argument("--corpus", default=str(SHARED / "data" / "beir" / "scifact"))
    p.add_argument("--texts", type=int, default=256)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--adamerging", action="store_true")
    p.add_argument("--queries", type=int, default=8)
    p.add_argument("--batch-queries", type=int, default=4)
    p.add_argument("--candidates", type=int, default=8)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--workdir", default="/tmp/mergeir-data-aware")
    p.add_argument("--phase", help=argparse.SUPPRESS)
    p.add_argument("--triplet", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.phase:
        print("RESULT " + json.dumps(phase(args)))
        return
    from _triplets import perturbed_triplet

    model = Path(args.model)
    if not (model / "model.safetensors").is_file():
        sys.exit(f"{model}: no model.safetensors (shared models absent)")
    work = Path(args.workdir)
    tri = perturbed_triplet(model, work / "triplet")
    import shutil

    shutil.rmtree(work / "cache", ignore_errors=True)
    phases = ["forward", "stats-cold", "stats-warm", "merge-ta", "merge-regmean"]
    if args.adamerging:
        phases += ["score", "adamerging"]
    results = {}
    base = [a for a in sys.argv[1:]]
    for name in phases:
        cmd = [sys.executable, __file__, *base, "--phase", name]
        cmd += ["--triplet", json.dumps({k: str(v) for k, v in tri.items()})]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"phase {name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        results[name] = json.loads(line[len("RESULT ") :])
        print(f"{name}: {results[name]}", file=sys.stderr)
    r = results
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch threads {args.threads}; model {model.name}; corpus {Path(args.corpus).name}, "
          f"{r['forward']['texts']} texts × ≤ {args.max_length} tokens, batch {args.batch_size}\n")  # fmt: skip
    print("| phase | wall s | peak RSS MB | tokens/s | note |")
    print("|:---|---:|---:|---:|:---|")
    fwd = r["forward"]
    print(f"| forward pass of ΘT (baseline) | {fwd['seconds']:.2f} | {fwd['rss_mb']:.0f} | "
          f"{fwd['tokens'] / fwd['seconds']:,.0f} | {fwd['tokens']:,} tokens |")  # fmt: skip
    cold = r["stats-cold"]
    per_model = cold["stat_seconds"]
    print(f"| statistics pass, cold (ΘT + ΘD) | {cold['seconds']:.2f} | {cold['rss_mb']:.0f} | "
          f"{cold['tokens'] / sum(per_model):,.0f} | accumulators {cold['accumulator_bytes'] / 1e6:.0f} MB"
          f" per model; {', '.join(f'{s:.2f}' for s in per_model)} s per model |")  # fmt: skip
    warm = r["stats-warm"]
    print(f"| statistics, warm (cache hit) | {warm['seconds']:.3f} | {warm['rss_mb']:.0f} | – | "
          f"{warm['hits']} hits, {warm['misses']} misses |")  # fmt: skip
    for name, label in (("merge-ta", "merge, task arithmetic (baseline)"),
                        ("merge-regmean", "merge, RegMean from cached statistics")):  # fmt: skip
        print(f"| {label} | {r[name]['seconds']:.2f} | {r[name]['rss_mb']:.0f} | – | |")
    if args.adamerging:
        s, a = r["score"], r["adamerging"]
        print(f"| one scoring pass of ΘT (baseline) | {s['seconds']:.2f} | {s['rss_mb']:.0f} | – | "
              f"{s['pairs']} pairs |")  # fmt: skip
        print(f"| AdaMerging learning | {a['seconds']:.2f} | {a['rss_mb']:.0f} | – | {a['steps']} "
              f"steps × {a['pairs_per_step']} pairs, {a['coefficients']} coefficients |")  # fmt: skip
    print()
    print(f"statistics pass per model / forward pass: {max(per_model) / fwd['seconds']:.2f}×")
    print(f"statistics warm / cold: {warm['seconds'] / cold['seconds']:.4f}×")
    print(f"RegMean merge / task-arithmetic merge: "
          f"{r['merge-regmean']['seconds'] / r['merge-ta']['seconds']:.2f}×")  # fmt: skip
    if args.adamerging:
        s, a = r["score"], r["adamerging"]
        per_step = a["seconds"] / a["steps"]
        print(f"AdaMerging per step / one scoring pass: {per_step / s['seconds']:.2f}× "
              f"(a step scores {a['pairs_per_step']} pairs forward and backward; the pass "
              f"{s['pairs']} pairs forward)")  # fmt: skip


if __name__ == "__main__":
    main()
