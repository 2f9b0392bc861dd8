"""Real model, real data: all-MiniLM-L6-v2 re-ranks BM25 top-100 on SciFact test."""

from __future__ import annotations

import pytest

from conftest import shared_path
from mergekit_ir.evaluation.datasets import load_beir_folder
from mergekit_ir.evaluation.fusion import fuse
from mergekit_ir.evaluation.metrics import evaluate, mean_scores
from mergekit_ir.params import check_params
from mergekit_ir.plugin_host import catalog
from mergekit_ir.scoring.scorer import ScoringSettings

pytestmark = pytest.mark.slow


def test_minilm_reranks_scifact_bm25_top100():
    model = shared_path("models", "all-MiniLM-L6-v2")
    ds = load_beir_folder(shared_path("data", "beir", "scifact"), "test")
    cat = catalog()
    fs = cat.first_stage("bm25s")
    bm25 = fs.build(ds.corpus, check_params(fs.params, {}, "fs", "bm25s"), None).search(
        ds.queries, 100
    )
    kind = cat.scorer("bi-encoder")
    scorer = kind.load(
        model,
        check_params(kind.params, {}, "scorer", "bi-encoder"),
        ScoringSettings(device="cpu", batch_size=64, show_progress=False),
    )
    docs = {d: ds.corpus[d].full_text for q in bm25.values() for d in q}
    dense = scorer.rerank(ds.queries, bm25, docs)
    fused = fuse([bm25, dense], method="wsum", norm="min-max", params={"weights": [0.5, 0.5]})
    metrics = ["NDCG@10", "P@10", "MAP@100"]
    scores = {
        name: mean_scores(evaluate(ds.qrels, run, metrics))
        for name, run in (("bm25", bm25), ("minilm", dense), ("fused", fused))
    }
    print("\nSciFact test, BM25 top-100 re-ranked by all-MiniLM-L6-v2:")
    for name, s in scores.items():
        print(f"  {name:<7} " + "  ".join(f"{m} {v:.4f}" for m, v in s.items()))
    # MTEB reports 0.645 for MiniLM as a full dense retriever; re-ranking BM25's top-100 lands near it,
    # and fusing with BM25 (0.686) helps.
    assert 0.60 < scores["minilm"]["NDCG@10"] < 0.70
    assert (
        scores["fused"]["NDCG@10"]
        > max(scores["minilm"]["NDCG@10"], scores["bm25"]["NDCG@10"]) - 0.01
    )
