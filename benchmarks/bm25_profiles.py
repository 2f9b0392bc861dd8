"""BM25 as the paper ran it: both bm25s profiles against the paper's BM25 row.

    python benchmarks/bm25_profiles.py                       # SciFact + NFCorpus test
    python benchmarks/bm25_profiles.py --data ../shared/data/beir --datasets scifact

Prints a Markdown table (NDCG@10, P@10, NDCG@3, MAP@100, computed with ranx through
``mergekit_ir.evaluation.metrics``: trec_eval's tie order) under two evaluation conventions:

- ``all``: every judged query counts; a query without a single hit scores 0 (the
  project's convention).
- ``beir``: what beir's ``EvaluateRetrieval.evaluate`` (pytrec_eval) reports, which
  is how the paper's row was computed: documents whose id equals the query id are
  dropped, and queries with no hit are left out of the average (beir's
  ``BM25Search`` never records them, and pytrec_eval only scores queries in the run).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from mergekit_ir.evaluation.datasets import load_beir_folder
from mergekit_ir.evaluation.metrics import evaluate, mean_scores
from mergekit_ir.experiments.registry import load_registry
from mergekit_ir_plugins.first_stages.bm25s_backend import build

METRICS = ("NDCG@10", "P@10", "NDCG@3", "MAP@100")


def paper_bm25_row() -> dict[str, dict[str, float]]:
    """Braga et al.'s BM25 row (Elasticsearch via beir), as ``registry.yaml`` declares it."""
    reg = load_registry(Path(__file__).resolve().parents[1] / "registry.yaml")
    return {
        r.dataset: dict(r.values)
        for r in reg.experiment("paper-table1").reported
        if r.row == "bm25"
    }


PAPER = paper_bm25_row()
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "beir"


def beir_convention(
    run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]]
) -> tuple[dict, dict]:
    """(run, qrels) as beir + pytrec_eval evaluate them (see the module docstring)."""
    out_run = {}
    for qid, docs in run.items():
        hits = {d: s for d, s in docs.items() if d != qid}
        if hits and qid in qrels:
            out_run[qid] = hits
    return out_run, {q: qrels[q] for q in out_run}


def scores(
    run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]], convention: str = "all"
) -> dict[str, float]:
    """Mean metrics of ``run``; ``convention`` is ``all`` or ``beir``."""
    if convention == "beir":
        run, qrels = beir_convention(run, qrels)
    return mean_scores(evaluate(qrels, run, METRICS))


def measure(
    data: Path, dataset: str, profile: str, k: int = 100, cache_dir: Path | None = None
) -> dict[str, dict[str, float]]:
    """{convention: metrics} for one profile on one dataset's test split."""
    ds = load_beir_folder(data / dataset, "test")
    index = build(ds.corpus, {"profile": profile, "language": ds.language}, cache_dir)
    run = index.search(ds.queries, k)
    return {conv: scores(run, ds.qrels, conv) for conv in ("beir", "all")}


def table(data: Path, datasets: list[str], cache_dir: Path | None = None) -> str:
    lines = [
        "| dataset | run | eval | " + " | ".join(METRICS) + " |",
        "|---|---|---|" + "---:|" * len(METRICS),
    ]
    for dataset in datasets:
        if dataset in PAPER:
            cells = " | ".join(f"{PAPER[dataset][m]:.3f}" for m in METRICS)
            lines.append(f"| {dataset} | paper (Elasticsearch) | beir | {cells} |")
        for profile in ("elasticsearch", "bm25s"):
            t = time.perf_counter()
            result = measure(data, dataset, profile, cache_dir=cache_dir)
            print(f"# {dataset} {profile}: {time.perf_counter() - t:.1f} s", file=sys.stderr)
            for conv in ("beir", "all"):
                cells = " | ".join(f"{result[conv][m]:.4f}" for m in METRICS)
                lines.append(f"| {dataset} | profile={profile} | {conv} | {cells} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help="folder holding the BEIR datasets (default: %(default)s)",
    )
    parser.add_argument("--datasets", nargs="+", default=["scifact", "nfcorpus"])
    parser.add_argument(
        "--cache", type=Path, default=None, help="index cache folder (default: none)"
    )
    args = parser.parse_args(argv)
    missing = [d for d in args.datasets if not (args.data / d).is_dir()]
    if missing:
        parser.error(f"{', '.join(missing)} not found under {args.data}")
    print(table(args.data, args.datasets, args.cache))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
