"""The splade scorer against a direct AutoModelForMaskedLM computation, one text at a time."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer

from mergekit_ir.params import check_params
from mergekit_ir.plugin_host import catalog
from mergekit_ir.scoring.scorer import ScoringSettings
from mergekit_ir_plugins.scorers.splade import splade_weights
from tiny_checkpoints import save_word_bert

SPLADE_TINY = Path(__file__).resolve().parents[2] / "shared/models/splade-tiny"
QUERIES = {"q1": "protein in cancer cells", "q2": "drug effects on blood"}
DOCS = {
    "d1": "the protein is high in cancer cells of mice",
    "d2": "drug",
    "d3": "blood levels of the drug increase the risk of disease in human patients",
    "d4": "gene expression",
}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mlm(tmp_path_factory) -> Path:
    return save_word_bert(tmp_path_factory.mktemp("splade") / "m", 5, head="mlm")


def load(path: Path, batch_size: int = 3, **options):
    kind = catalog().scorer("splade")
    kind.check(path)
    opts = check_params(kind.params, options, "scorer", "splade")
    settings = ScoringSettings(
        device="cpu", dtype="fp32", batch_size=batch_size, show_progress=False
    )
    return kind.load(path, opts, settings)


def direct(path: Path, text: str, max_length: int) -> torch.Tensor:
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForMaskedLM.from_pretrained(path).eval()
    enc = tok(text, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits[0]
    return torch.log1p(torch.relu(logits)).max(dim=0).values


def test_weights_ignore_padding_by_hand():
    logits = torch.tensor([[[0.0, 1.0], [2.0, -1.0], [9.0, 9.0]]])
    mask = torch.tensor([[1, 1, 0]])
    w = splade_weights(logits, mask)
    assert torch.allclose(w, torch.log1p(torch.tensor([[2.0, 1.0]])))


def test_splade_rerank_matches_direct_mlm_computation(mlm):
    scorer = load(mlm, batch_size=3)
    candidates = {"q1": {"d1": 0, "d2": 0, "d3": 0}, "q2": {"d2": 0, "d3": 0, "d4": 0}}
    run = scorer.rerank(QUERIES, candidates, DOCS)
    for qid, cands in candidates.items():
        q = direct(mlm, QUERIES[qid], 64)
        for did in cands:
            expected = float(q @ direct(mlm, DOCS[did], 256))
            assert run[qid][did] == pytest.approx(expected, rel=1e-5, abs=1e-5)
    pairs = [(QUERIES["q1"], DOCS["d3"]), (QUERIES["q2"], DOCS["d3"])]
    assert scorer.score_pairs(pairs) == pytest.approx(
        [run["q1"]["d3"], run["q2"]["d3"]], rel=1e-5, abs=1e-5
    )


def test_splade_truncates_queries_and_documents(mlm):
    scorer = load(mlm, batch_size=2, max_length=8, query_max_length=4)
    run = scorer.rerank(QUERIES, {"q1": {"d3": 0}}, DOCS)
    expected = float(direct(mlm, QUERIES["q1"], 4) @ direct(mlm, DOCS["d3"], 8))
    assert run["q1"]["d3"] == pytest.approx(expected, rel=1e-5, abs=1e-5)
    assert scorer.truncation.fields["documents"] == [1, 1]


def test_splade_warns_on_a_model_without_mlm_head(tmp_path):
    base = save_word_bert(tmp_path / "b", 1, head="base")
    scorer = load(base)
    assert any("no trained MLM head" in w for w in scorer.warnings)


@pytest.mark.slow
def test_splade_tiny_real_weights_rank_the_relevant_document_first():
    if not SPLADE_TINY.is_dir():
        pytest.skip(f"{SPLADE_TINY} is absent")
    scorer = load(SPLADE_TINY, batch_size=4)
    assert not scorer.warnings
    queries = {"a": "vitamin d deficiency and bone fractures", "b": "insulin resistance in obesity"}
    docs = {
        "x": "Low vitamin D levels were associated with more hip fractures in older adults.",
        "y": "Obese patients showed impaired insulin signalling and higher resistance.",
    }
    run = scorer.rerank(queries, {"a": {"x": 0, "y": 0}, "b": {"x": 0, "y": 0}}, docs)
    assert run["a"]["x"] > run["a"]["y"] and run["b"]["y"] > run["b"]["x"]
    expected = float(direct(SPLADE_TINY, queries["a"], 64) @ direct(SPLADE_TINY, docs["x"], 256))
    assert run["a"]["x"] == pytest.approx(expected, rel=1e-4)


def test_head_by_text_equals_the_full_logits_path(mlm):
    """The per-text head (no batch × length × vocab tensor) gives the full-logits weights."""
    from mergekit_ir import mlm_head
    from mergekit_ir_plugins.scorers.splade import splade_weights_by_text

    tok = AutoTokenizer.from_pretrained(mlm)
    model = AutoModelForMaskedLM.from_pretrained(mlm).eval()
    batch = tok(list(DOCS.values()), padding=True, return_tensors="pt")  # right-padded
    with torch.no_grad():
        full = splade_weights(model(**batch).logits, batch["attention_mask"])
        by_text = splade_weights_by_text(model, mlm_head(model), dict(batch))
    assert mlm_head(model) is model.cls
    torch.testing.assert_close(by_text, full, rtol=1e-6, atol=1e-6)


def test_splade_differentiable_scores_equal_its_scores_and_carry_gradients(mlm):
    """AdaMerging differentiates through these: the same numbers as score_pairs, with a
    gradient reaching the encoder's and the head's weights."""
    scorer = load(mlm)
    pairs = [(QUERIES["q1"], DOCS["d1"]), (QUERIES["q1"], DOCS["d3"]), (QUERIES["q2"], DOCS["d3"])]
    expected = scorer.score_pairs(pairs)
    scores = scorer.differentiable_scores(pairs)
    assert scores.tolist() == pytest.approx(expected, rel=1e-5, abs=1e-5)
    scores.sum().backward()
    grads = {n: p.grad for n, p in scorer.model.named_parameters()}
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "layer.0." in n)
    scorer.model.zero_grad(set_to_none=True)
