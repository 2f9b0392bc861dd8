"""SPLADE scorer: sparse lexical expansion from an MLM head, scored by dot product.

Term weights are ``w_j = max_i log(1 + ReLU(logit_ij))`` over the (unpadded) tokens
``i`` of a text, and a query-document score is ``q · d``. The MLM head *is* the
scoring head, so a domain vector built with masked-LM adaptation moves exactly the
weights this scorer reads. Documents are encoded once per model state, in
length-sorted batches; vectors are kept dense (fp32, CPU) since reranking touches at
most a few thousand documents.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from mergekit_ir import (
    Param,
    Ranking,
    Scorer,
    ScorerKind,
    ScoringSettings,
    encoder_of,
    hookimpl,
    mlm_head,
    read_model_config,
    run_batches,
    tokenize,
)

PARAMS = (
    Param("max_length", int, 256, "token limit per document", min=8),
    Param("query_max_length", int, 64, "token limit per query", min=4),
)


def splade_weights(logits: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``max`` over unpadded tokens of ``log(1 + ReLU(logits))``: (batch, vocab)."""
    w = torch.log1p(torch.relu(logits.float()))
    w = w * attention_mask.unsqueeze(-1).to(w.dtype)  # w >= 0, so a zeroed pad never wins
    return w.max(dim=1).values


def splade_weights_by_text(
    model: torch.nn.Module, head: torch.nn.Module, batch: dict[str, torch.Tensor]
) -> torch.Tensor:
    """:func:`splade_weights` without the (batch × length × vocab) logits tensor.

    The encoder runs on the whole batch; the head runs one text at a time on its unpadded
    tokens. log(1 + ReLU(·)) is monotone, so the max over tokens is taken on the logits and
    the transform applied to the (vocab,) maxima. A 32 × 128-token batch of a 30k-vocabulary
    model otherwise allocates three 0.5 GB tensors, and the page faults of those fresh
    allocations cost as much CPU as the arithmetic.
    """
    hidden = encoder_of(model)(**batch).last_hidden_state
    mask = batch["attention_mask"].bool()
    maxima = [head(hidden[i][mask[i]]).amax(dim=0) for i in range(hidden.shape[0])]
    return torch.log1p(torch.relu(torch.stack(maxima).float()))


class Splade(Scorer):
    cost_unit = "document"  # documents are encoded once per pass, then dot products

    def __init__(self, path: Path, options: Mapping[str, Any], settings: ScoringSettings):
        super().__init__(settings)
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = self.load_pretrained(AutoModelForMaskedLM, path, report_missing=True)
        head = [k for k in self.newly_initialised if "embeddings" not in k]
        if head:
            self.warn(
                f"{path}: no trained MLM head ({len(head)} weights randomly initialised, e.g. "
                f"{head[0]}); SPLADE scores from this model are not meaningful"
            )
        self.max_length = options.get("max_length") or 256
        self.query_max_length = min(options.get("query_max_length") or 64, self.max_length)

    def encode(self, texts: Sequence[str], max_length: int, name: str) -> torch.Tensor:
        self.warn_empty(texts, name)
        enc = tokenize(self.tokenizer, texts, None, max_length, self.truncation, name=name)

        head = mlm_head(self.model)

        def forward(batch: dict[str, torch.Tensor]) -> torch.Tensor:
            if head is not None:
                return splade_weights_by_text(self.model, head, batch)
            return splade_weights(self.model(**batch).logits, batch["attention_mask"])

        with self.progress(len(texts), name, unit="text") as bar:
            return run_batches(
                self.tokenizer, enc, self.settings.batch_size, self.device, forward, bar
            )

    def rerank(
        self, queries: Mapping[str, str], candidates: Ranking, docs: Mapping[str, str]
    ) -> Ranking:
        qids = sorted(candidates)
        dids = sorted({d for q in qids for d in candidates[q]})
        q_w = self.encode([queries[q] for q in qids], self.query_max_length, "queries")
        d_w = self.encode([docs[d] for d in dids], self.max_length, "documents")
        self.log_truncation()
        row = {d: i for i, d in enumerate(dids)}
        run: Ranking = {}
        for qi, qid in enumerate(qids):
            cands = sorted(candidates[qid])
            idx = torch.tensor([row[d] for d in cands], dtype=torch.long)
            scores = d_w[idx] @ q_w[qi]
            run[qid] = {d: float(s) for d, s in zip(cands, scores.tolist(), strict=True)}
        return run

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Each distinct query and document is encoded once."""
        q_texts = list(dict.fromkeys(p[0] for p in pairs))
        d_texts = list(dict.fromkeys(p[1] for p in pairs))
        if not pairs:
            return []
        q_w = self.encode(q_texts, self.query_max_length, "queries")
        d_w = self.encode(d_texts, self.max_length, "documents")
        self.log_truncation()
        q_row = {t: i for i, t in enumerate(q_texts)}
        d_row = {t: i for i, t in enumerate(d_texts)}
        qi = torch.tensor([q_row[p[0]] for p in pairs], dtype=torch.long)
        di = torch.tensor([d_row[p[1]] for p in pairs], dtype=torch.long)
        return (q_w[qi] * d_w[di]).sum(-1).tolist()


def check(path: Path) -> None:
    read_model_config(path, "splade", "a transformers folder with a masked-LM head")


@hookimpl
def register_scorers(register):
    register(
        ScorerKind(
            name="splade",
            description="sparse lexical expansion: w = max log(1+ReLU(MLM logits)), score = q·d",
            load=Splade,
            params=PARAMS,
            check=check,
        )
    )
