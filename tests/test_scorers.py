"""Scorer plugins against independent references, on tiny real checkpoints.

bi-encoder / cross-encoder against sentence-transformers; monot5 and causal-lm
against a direct model call computed by hand; batching, truncation, bad input.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from mergekit_ir.errors import CheckpointError, ConfigError, MergeIRError
from mergekit_ir.params import check_params
from mergekit_ir.plugin_host import catalog
from mergekit_ir.scoring.batching import encode_template, parse_template
from mergekit_ir.scoring.scorer import (
    ScoringSettings,
    length_sorted_batches,
    padding_waste,
    resolve_device,
)
from tiny_checkpoints import (
    VOCAB,
    save_cross_encoder,
    save_llama,
    save_sentence_transformer,
    save_t5,
)

MINILM = Path(__file__).resolve().parents[2] / "shared/models/all-MiniLM-L6-v2"
SCIFACT = Path(__file__).resolve().parents[2] / "shared/data/beir/scifact/corpus.jsonl"

_rng = random.Random(7)
pytestmark = pytest.mark.usefixtures("one_thread")


def _text(n: int) -> str:
    return " ".join(_rng.choice(VOCAB) for _ in range(n))


QUERIES = [
    "what is the role of protein in cancer",
    "drug effects",
    "how does gene expression increase risk",
]
DOCS = [_text(n) for n in (3, 40, 7, 1, 18, 60, 11)]
PAIRS = [(q, d) for q in QUERIES for d in DOCS]
SOME = PAIRS[::3]  # every document once, each query at least twice


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("scorer-ckpts")
    return {
        "t5": save_t5(root / "t5"),
        "llama": save_llama(root / "llama"),
        "st": save_sentence_transformer(root / "st"),
        "st_dense": save_sentence_transformer(root / "st_dense", dense=True),
        "ce": save_cross_encoder(root / "ce"),
    }


def settings(batch_size: int = 4, dtype: str = "fp32") -> ScoringSettings:
    return ScoringSettings(device="cpu", dtype=dtype, batch_size=batch_size, show_progress=False)


def load(kind: str, path: Path, batch_size: int = 4, dtype: str = "fp32", **options):
    sk = catalog().scorer(kind)
    opts = check_params(sk.params, options, "scorer", kind)
    sk.check(path)
    return sk.load(path, opts, settings(batch_size, dtype))


# -- references --------------------------------------------------------------------------


def test_bi_encoder_matches_sentence_transformers(ckpt):
    from sentence_transformers import SentenceTransformer

    texts = [*DOCS, "", *QUERIES]  # DOCS[5] is longer than max_seq_length=24
    ours = load("bi-encoder", ckpt["st"])
    ref = SentenceTransformer(str(ckpt["st"]), device="cpu").encode(
        texts, batch_size=4, convert_to_tensor=True
    )
    got = ours.encode_documents(texts)
    torch.testing.assert_close(got, ref.float().cpu(), atol=1e-5, rtol=0)
    assert ours.truncation.fields["documents"][1] == sum(len(t.split()) + 2 > 24 for t in texts)
    scores = ours.score_pairs(PAIRS)
    q, d = ours.encode_queries(QUERIES), ours.encode_documents(DOCS)
    torch.testing.assert_close(torch.tensor(scores), (q @ d.T).flatten(), atol=1e-6, rtol=0)


def test_bi_encoder_dense_module_matches_sentence_transformers(ckpt, tmp_path):
    """A Dense layer after pooling (msmarco-distilbert-base-dot-prod-v3 has one) is applied, and survives merging."""
    from click.testing import CliRunner
    from sentence_transformers import SentenceTransformer

    from mergekit_ir.cli import main

    ref = SentenceTransformer(str(ckpt["st_dense"]), device="cpu").encode(
        DOCS, batch_size=4, convert_to_tensor=True
    )
    got = load("bi-encoder", ckpt["st_dense"]).encode_documents(DOCS)
    assert got.shape[1] == 16
    torch.testing.assert_close(got, ref.float().cpu(), atol=1e-5, rtol=0)
    out = tmp_path / "merged"
    res = CliRunner().invoke(
        main,
        [
            "merge",
            "--ir",
            str(ckpt["st_dense"]),
            "--pretrained",
            str(ckpt["st_dense"]),
            "--domain",
            str(ckpt["st_dense"]),
            "--alpha",
            "0.5",
            "--out",
            str(out),
            "-q",
        ],
    )
    assert res.exit_code == 0, res.output
    merged = SentenceTransformer(str(out), device="cpu").encode(
        DOCS, batch_size=4, convert_to_tensor=True
    )
    torch.testing.assert_close(merged, ref, atol=1e-5, rtol=0)  # τ = 0 here: same model, Dense kept


def test_cross_encoder_matches_sentence_transformers(ckpt):
    from sentence_transformers import CrossEncoder

    ours = load("cross-encoder", ckpt["ce"], max_length=32)
    ref = CrossEncoder(str(ckpt["ce"]), max_length=32, device="cpu")
    expected = ref.predict(
        SOME, batch_size=4, activation_fn=torch.nn.Identity(), convert_to_tensor=True
    )
    torch.testing.assert_close(
        torch.tensor(ours.score_pairs(SOME)), expected.float().cpu(), atol=1e-5, rtol=0
    )
    assert ours.truncation.truncated > 0  # the 40- and 60-word documents were cut


def test_cross_encoder_query_max_length_cuts_the_query_then_the_document(ckpt):
    from transformers import AutoModelForSequenceClassification

    ours = load("cross-encoder", ckpt["ce"], max_length=16, query_max_length=2)
    tok = AutoTokenizer.from_pretrained(ckpt["ce"])
    model = AutoModelForSequenceClassification.from_pretrained(ckpt["ce"]).eval()
    expected = []
    with torch.no_grad():
        for q, d in SOME:
            enc = tok(
                " ".join(q.split()[:2]),
                d,
                truncation="only_second",
                max_length=16,
                return_tensors="pt",
            )
            expected.append(model(**enc).logits[0, 0].item())
    torch.testing.assert_close(
        torch.tensor(ours.score_pairs(SOME)), torch.tensor(expected), atol=1e-5, rtol=0
    )
    assert ours.truncation.fields["queries"] == [
        len(SOME),
        sum(len(q.split()) > 2 for q, _ in SOME),
    ]
    assert ours.truncation.fields["documents"][1] > 0
    with pytest.raises(ConfigError, match="query_max_length=40: leaves no room for the document"):
        load("cross-encoder", ckpt["ce"], max_length=16, query_max_length=40)


def _monot5_by_hand(path: Path, pairs):
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSeq2SeqLM.from_pretrained(path).eval()
    true_id, false_id = tok.convert_tokens_to_ids(["▁true", "▁false"])
    out = []
    with torch.no_grad():
        for q, d in pairs:
            ids = tok(f"Query: {q} Document: {d} Relevant:", return_tensors="pt")["input_ids"]
            assert ids[0, -1].item() == tok.eos_token_id
            logits = model(input_ids=ids, decoder_input_ids=torch.tensor([[0]])).logits[0, 0]
            out.append(torch.log_softmax(logits[[true_id, false_id]], dim=-1)[0].item())
    return torch.tensor(out)


def test_monot5_matches_direct_model_call(ckpt):
    ours = load("monot5", ckpt["t5"])
    assert ours.token_rule == "model_type t5"
    torch.testing.assert_close(
        torch.tensor(ours.score_pairs(SOME)), _monot5_by_hand(ckpt["t5"], SOME), atol=1e-5, rtol=0
    )


def _query_loglik_by_hand(path: Path, pairs, reduction="mean"):
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    out = []
    with torch.no_grad():
        for q, d in pairs:
            prompt = tok(f"Document: {d} Query:")["input_ids"]  # <s> document ... query :
            query = tok(q, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([prompt + query])
            logp = torch.log_softmax(model(ids).logits[0], dim=-1)
            token_lp = [logp[len(prompt) + i - 1, t].item() for i, t in enumerate(query)]
            total = sum(token_lp)
            out.append(total / max(len(query), 1) if reduction == "mean" else total)
    return torch.tensor(out)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_causal_lm_query_likelihood_matches_direct_model_call(ckpt, reduction):
    pairs = [*SOME, ("", DOCS[0])]
    ours = load("causal-lm", ckpt["llama"], batch_size=3, reduction=reduction)
    got = torch.tensor(ours.score_pairs(pairs))
    torch.testing.assert_close(
        got, _query_loglik_by_hand(ckpt["llama"], pairs, reduction), atol=1e-5, rtol=0
    )
    assert got[-1].item() == 0.0  # an empty query: log P(nothing) = 0


def test_causal_lm_relevance_token_matches_direct_model_call(ckpt):
    ours = load("causal-lm", ckpt["llama"], mode="relevance_token", yes_token="yes", no_token="no")
    tok = AutoTokenizer.from_pretrained(ckpt["llama"])
    model = AutoModelForCausalLM.from_pretrained(ckpt["llama"]).eval()
    yes, no = tok.convert_tokens_to_ids(["yes", "no"])
    assert (ours.yes_id, ours.no_id) == (yes, no)
    expected = []
    with torch.no_grad():
        for q, d in SOME:
            prompt = f"Document: {d}\nQuery: {q}\nIs the document relevant to the query? Answer:"
            last = model(tok(prompt, return_tensors="pt")["input_ids"]).logits[0, -1]
            expected.append(torch.log_softmax(last[[yes, no]], dim=-1)[0].item())
    torch.testing.assert_close(
        torch.tensor(ours.score_pairs(SOME)), torch.tensor(expected), atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("kind,folder", [("causal-lm", "llama"), ("monot5", "t5")])
def test_bf16_weights_stay_bf16(ckpt, kind, folder):
    low = load(kind, ckpt[folder], dtype="bf16")
    assert {p.dtype for p in low.model.parameters()} == {torch.bfloat16}
    got = torch.tensor(low.score_pairs(SOME))
    torch.testing.assert_close(
        got, torch.tensor(load(kind, ckpt[folder]).score_pairs(SOME)), atol=0.1, rtol=0.05
    )


def test_causal_lm_truncates_each_field(ckpt):
    ours = load("causal-lm", ckpt["llama"], doc_max_length=5, query_max_length=2)
    long_q, long_d = "what is the role of protein", _text(30)
    got = ours.score_pairs([(long_q, long_d)])
    cut_q, cut_d = " ".join(long_q.split()[:2]), " ".join(long_d.split()[:5])
    torch.testing.assert_close(
        torch.tensor(got), _query_loglik_by_hand(ckpt["llama"], [(cut_q, cut_d)]), atol=1e-5, rtol=0
    )
    assert ours.truncation.fields == {"documents": [1, 1], "queries": [1, 1]}


# -- batching and truncation ---------------------------------------------------------

KINDS = {
    "bi-encoder": ("st", {}),
    "cross-encoder": ("ce", {"max_length": 32}),
    "monot5": ("t5", {"max_length": 24}),
    "causal-lm": ("llama", {"doc_max_length": 16}),
    "causal-lm-relevance": ("llama", {"mode": "relevance_token"}),
}


@pytest.mark.parametrize("name", sorted(KINDS))
def test_length_sorted_batches_match_batch_size_one(ckpt, name):
    folder, options = KINDS[name]
    kind = name.removesuffix("-relevance")
    pairs = [*PAIRS[::2], ("", DOCS[1]), (QUERIES[0], ""), ("", "")]
    batched_scorer = load(kind, ckpt[folder], batch_size=4, **options)
    batched = batched_scorer.score_pairs(pairs)
    single = load(kind, ckpt[folder], batch_size=1, **options).score_pairs(pairs)
    torch.testing.assert_close(torch.tensor(batched), torch.tensor(single), atol=1e-5, rtol=0)
    assert all(torch.isfinite(torch.tensor(single)))  # empty texts are scored, not crashed on
    assert batched_scorer.score_pairs(pairs) == batched  # deterministic on CPU


def test_padding_waste_lower_with_sorting():
    lengths = [len(d.split()) + 2 for d in DOCS] * 9
    _rng.shuffle(lengths)
    assert padding_waste(lengths, 8, sort=True) < padding_waste(lengths, 8, sort=False)
    assert padding_waste([5] * 10, 4) == 0.0
    batches = list(length_sorted_batches(lengths, 8))
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(lengths[b[0]] >= lengths[b[-1]] for b in batches)


def test_monot5_keeps_the_prompt_when_the_document_is_cut(ckpt):
    tok = AutoTokenizer.from_pretrained(ckpt["t5"])
    parts = parse_template("Query: {query} Document: {document} Relevant:")
    enc = encode_template(
        tok,
        parts,
        [{"query": "what is the role of protein", "document": _text(50)}],
        {"query": 3, "document": None},
        max_length=16,
    )
    tokens = tok.convert_ids_to_tokens(enc.input_ids[0])
    assert len(tokens) == 16
    assert tokens[:5] == ["query", ":", "what", "is", "the"]
    assert tokens[-3:] == ["relevant", ":", "</s>"]
    qs, qe = enc.spans[0]["query"]
    assert (qs, qe) == (2, 5)


# -- bad input -------------------------------------------------------------------------


def test_monot5_rejects_an_encoder_checkpoint(ckpt):
    with pytest.raises(
        CheckpointError,
        match=r"a bert model is not seq2seq \(encoder-decoder\); scorer kind 'monot5'",
    ):
        catalog().scorer("monot5").check(ckpt["ce"])


def test_causal_lm_rejects_encoders_and_seq2seq(ckpt):
    check = catalog().scorer("causal-lm").check
    with pytest.raises(
        CheckpointError, match="BertForSequenceClassification is not a causal language model"
    ):
        check(ckpt["ce"])
    with pytest.raises(
        CheckpointError, match="seq2seq model is not decoder-only; use scorer kind 'monot5'"
    ):
        check(ckpt["t5"])


def test_monot5_true_token_missing_from_vocabulary(tmp_path):
    folder = save_t5(tmp_path / "t5", extra=("▁false",))
    with pytest.raises(CheckpointError, match="true_token '▁true' is not"):
        load("monot5", folder)
    with pytest.raises(
        CheckpointError, match="true_token 'zebra' is not in the tokenizer's vocabulary"
    ):
        load("monot5", folder, true_token="zebra", false_token="▁false")


def test_monot5_true_token_split_into_pieces(ckpt):
    with pytest.raises(
        CheckpointError,
        match=r"true_token 'drug-cell' is not one token: it splits into 3 pieces \('drug', '-', 'cell'\)",
    ):
        load("monot5", ckpt["t5"], true_token="drug-cell")


def test_monot5_token_detection(tmp_path, ckpt):
    # words resolve to the token the model would emit after the prompt
    words = load("monot5", ckpt["t5"], true_token="yes", false_token="no")
    tok = AutoTokenizer.from_pretrained(ckpt["t5"])
    assert (words.true_id, words.false_id) == tuple(tok.convert_tokens_to_ids(["yes", "no"]))
    both = ("▁true", "▁false", "▁yes", "▁no")
    # mT5 prefers yes/no
    mt5 = save_t5(tmp_path / "mt5", extra=both)
    cfg = json.loads((mt5 / "config.json").read_text())
    cfg["model_type"] = "mt5"
    cfg["architectures"] = ["MT5ForConditionalGeneration"]
    (mt5 / "config.json").write_text(json.dumps(cfg))
    scorer = load("monot5", mt5)
    assert scorer.token_rule == "model_type mt5"
    assert scorer.tokenizer.convert_ids_to_tokens([scorer.true_id, scorer.false_id]) == [
        "▁yes",
        "▁no",
    ]
    # a known reranker named in the model card
    t5 = save_t5(tmp_path / "card", extra=both)
    (t5 / "README.md").write_text("---\nbase_model: unicamp-dl/mt5-base-mmarco-v2\n---\nmerged\n")
    assert load("monot5", t5).token_rule == "known reranker unicamp-dl/mt5-base-mmarco-v2"
    # a mergekit_ir hint in config.json wins
    cfg = json.loads((t5 / "config.json").read_text())
    cfg["mergekit_ir"] = {"true_token": "▁true", "false_token": "▁false"}
    (t5 / "config.json").write_text(json.dumps(cfg))
    hinted = load("monot5", t5)
    assert hinted.token_rule == "config.json mergekit_ir hint"
    assert hinted.tokenizer.convert_ids_to_tokens([hinted.true_id]) == ["▁true"]


def test_template_must_name_both_fields(ckpt):
    with pytest.raises(ConfigError, match=r"must contain \{document\} exactly once"):
        load("monot5", ckpt["t5"], template="Query: {query} Relevant:")


def test_device_cuda_absent_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(
        MergeIRError,
        match="--device cuda: CUDA is not available on this machine; use --device auto or cpu",
    ):
        resolve_device("cuda")
    for kind in ("bi-encoder", "cross-encoder", "monot5", "causal-lm"):  # before any file is read
        with pytest.raises(MergeIRError, match="--device cuda: CUDA is not available"):
            catalog().scorer(kind).load(Path("unused"), {}, ScoringSettings(device="cuda"))


def test_all_scorers_registered():
    names = set(catalog().scorers)
    assert {"bi-encoder", "cross-encoder", "monot5", "causal-lm"} <= names
    with pytest.raises(ConfigError, match="not one of query_likelihood, relevance_token"):
        check_params(
            catalog().scorer("causal-lm").params, {"mode": "listwise"}, "scorer", "causal-lm"
        )


# -- real model ------------------------------------------------------------------------


@pytest.mark.slow
def test_minilm_bi_encoder_matches_sentence_transformers_on_scifact(monkeypatch):
    if not MINILM.is_dir() or not SCIFACT.is_file():
        pytest.skip(f"{MINILM} or {SCIFACT} absent")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    docs = []
    with SCIFACT.open() as f:
        for line in f:
            row = json.loads(line)
            docs.append((row.get("title", "") + " " + row["text"]).strip())
            if len(docs) == 20:
                break
    ours = load("bi-encoder", MINILM, batch_size=8)
    ref = SentenceTransformer(str(MINILM), device="cpu").encode(
        docs, batch_size=8, convert_to_tensor=True
    )
    torch.testing.assert_close(ours.encode_documents(docs), ref.float().cpu(), atol=1e-5, rtol=0)
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_scorer_plugin_example_in_the_docs_runs(ckpt):
    """docs/scorers.md's plugin example, executed as written, scores like the built-in cross-encoder."""
    import re

    doc = (Path(__file__).resolve().parents[1] / "docs" / "scorers.md").read_text()
    code = re.search(r"## Writing a scorer plugin\n\n```python\n(.*?)```", doc, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "docs/scorers.md", "exec"), namespace)
    kinds = []
    namespace["register_scorers"](kinds.append)
    kind = kinds[0]
    assert kind.name == "my-scorer"
    mine = kind.load(
        ckpt["ce"], check_params(kind.params, {"max_length": 32}, "scorer", "my-scorer"), settings()
    )
    builtin = load("cross-encoder", ckpt["ce"], max_length=32)
    torch.testing.assert_close(
        torch.tensor(mine.score_pairs(SOME)),
        torch.tensor(builtin.score_pairs(SOME)),
        atol=1e-5,
        rtol=0,
    )


def test_truncation_warns_once_then_logs_at_info(ckpt, caplog):
    """A sweep re-scores the same pairs dozens of times: one warning, not one per pass."""
    import logging

    scorer = load("cross-encoder", ckpt["ce"], max_length=16)
    with caplog.at_level(logging.INFO, logger="mergekit_ir.scoring.scorer"):
        scorer.score_pairs(SOME)
        scorer.score_pairs(SOME)
    levels = [r.levelno for r in caplog.records if "truncated" in r.getMessage()]
    assert levels == [logging.WARNING, logging.INFO]
