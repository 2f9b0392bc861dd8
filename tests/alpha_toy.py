"""A toy collection and tiny bi-encoder triplets with a planted best α.

The bi-encoders are 0-layer BERTs (embeddings + LayerNorm, mean pooling, cosine), so a
text's vector is the mean of its words' embedding directions and every score can be worked
out by hand. Topic ``t`` has a query word ``qt`` (direction u_t), a document word ``dt`` and
a competitor document word ``et`` at cosine ``COMPETITOR`` with u_t. ``BM25`` sees only the
shared word ``common``, so it ranks every document alike and the model decides.

- ``planted``: ΘT maps ``dt`` to the wrong topic u_{t+1}; the task vector is
  τ[dt] = 2(u_t − u_{t+1}), so Θ'(α)[dt] = (1 − 2α)·u_{t+1} + 2α·u_t. Only α = 0.5 puts
  ``dt`` above its competitor (cos 1 > 0.99; α = 0.6 gives 0.986): the best α is 0.5.
- ``harmful``: ΘT already maps ``dt`` to u_t; τ[dt] = u_{t+1} − u_t only hurts (α = 0.1
  ties α = 0, every larger α is worse): the guard must return α = 0.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

K = 12
COMPETITOR = 0.99
WORDS = ["common"] + [f"{p}{t}" for p in ("q", "d", "e") for t in range(K)]


def _directions(dim: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    m = torch.randn(dim, n, generator=g, dtype=torch.float64)
    m -= m.mean(dim=0, keepdim=True)  # zero mean: LayerNorm keeps the direction
    q, _ = torch.linalg.qr(m)
    return q.T  # n orthonormal, zero-mean rows


def _save(folder: Path, tok, emb: torch.Tensor) -> Path:
    from transformers import BertModel

    from mergekit_ir.references.tiny_models import bert_config

    torch.manual_seed(0)
    model = BertModel(bert_config(len(tok), num_hidden_layers=0)).eval()
    with torch.no_grad():
        e = model.embeddings
        e.word_embeddings.weight.copy_(emb.float())
        e.position_embeddings.weight.zero_()
        e.token_type_embeddings.weight.zero_()
        e.LayerNorm.weight.fill_(1.0)
        e.LayerNorm.bias.zero_()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def build_models(root: Path, kind: str) -> dict[str, Path]:
    """Θ0 = ΘT and ΘD = ΘT + τ for ``kind`` planted | harmful."""
    from mergekit_ir.references.tiny_models import word_tokenizer

    tok = word_tokenizer(WORDS)
    vocab = tok.get_vocab()
    u = _directions(32, K + 1)
    base = torch.zeros(len(tok), 32, dtype=torch.float64)
    for t in range(K):
        base[vocab[f"q{t}"]] = u[t]
        base[vocab[f"e{t}"]] = COMPETITOR * u[t] + math.sqrt(1 - COMPETITOR**2) * u[K]
    ir, dom = base.clone(), base.clone()
    for t in range(K):
        right, wrong = u[t], u[(t + 1) % K]
        d = vocab[f"d{t}"]
        if kind == "planted":
            ir[d], dom[d] = wrong, wrong + 2 * (right - wrong)
        else:
            ir[d], dom[d] = right, right + (wrong - right)
    root.mkdir(parents=True, exist_ok=True)
    return {
        "ir": _save(root / "ir", tok, ir),
        "pretrained": _save(root / "pretrained", tok, ir),
        "domain": _save(root / "domain", tok, dom),
    }


def write_collection(folder: Path, titled: bool) -> Path:
    """BEIR folder: documents ``t<t>`` ("common dt", titled "common qt") and competitors
    ``c<t>`` ("common et"); test queries ``t<t>`` and dev queries ``v<t>`` ("common qt")."""
    folder.mkdir(parents=True, exist_ok=True)
    corpus, queries, test, dev = [], [], [], []
    for t in range(K):
        title = f"common q{t}" if titled else ""
        corpus.append({"_id": f"t{t}", "title": title, "text": f"common d{t}"})
        corpus.append({"_id": f"c{t}", "title": "", "text": f"common e{t}"})
        queries += [
            {"_id": f"t{t}", "text": f"common q{t}"},
            {"_id": f"v{t}", "text": f"common q{t}"},
        ]
        test.append(f"t{t}\tt{t}\t1")
        dev.append(f"v{t}\tt{t}\t1")
    (folder / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus))
    (folder / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries))
    (folder / "qrels").mkdir(exist_ok=True)
    for name, rows in (("test", test), ("dev", dev)):
        (folder / "qrels" / f"{name}.tsv").write_text(
            "query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n"
        )
    return folder


def write_registry(root: Path, tuning: str, kind: str = "planted", titled: bool = False) -> Path:
    """A registry with one experiment ``toy`` on the toy triplet of ``kind``."""
    models = build_models(root / kind, kind)
    data = write_collection(root / ("titled" if titled else "plain"), titled)
    reg = root / f"registry-{kind}.yaml"
    reg.write_text(
        f"""
datasets:
  toy: {{beir: {data}, test: test, dev: dev}}
triplets:
  toy-{kind}:
    scorer: {{kind: bi-encoder, pooling: mean, similarity: cosine}}
    pretrained: {models["pretrained"]}
    domain: {models["domain"]}
    ir: {models["ir"]}
experiments:
  toy:
    triplets: [toy-{kind}]
    datasets: [toy]
    merge: {{method: task_arithmetic, alpha: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]}}
    first_stage: {{backend: bm25s, k: 100}}
    fusion: {{method: wsum, norm: min-max, weights: [0.5, 0.5]}}
    metrics: [NDCG@10]
    tuning: {tuning}
"""
    )
    return reg
