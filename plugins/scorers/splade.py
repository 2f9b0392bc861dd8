"""SPLADE scorer: sparse lexical expansion from an MLM head, scored by dot product.

Term weights are ``w_j = max_i log(1 + ReLU(logit_ij))`` over the (unpadded) tokens
``i`` of a text, and a query-document score is ``q · d``. The MLM head *is* the
scoring head, so a domain vector built with masked-LM adaptation moves exactly the
weights this scorer reads. Documents are encoded once per model state, in
length-sorted batches; vectors are kept dense (fp32, CPU) since reranking touches at
most a few thousand documents.

A sentence-transformers SparseEncoder folder (``modules.json``: a fill-mask Transformer and
``SpladePooling``) is read as ``SparseEncoder`` reads it: its pooling (``max`` or ``sum``),
activation (``relu`` or ``log1p_relu``), query/document prompts, and never more tokens
than its max_seq_length.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from mergekit_ir import (
    CheckpointError,
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
from mergekit_ir_plugins.scorers.bi_encoder import (
    check_st_modules,
    padded_batch,
    pair_dots,
    read_st_config,
    read_st_modules,
    st_max_length,
)

PARAMS = (
    Param(
        "max_length",
        int,
        256,
        "token limit per document (never more than a sentence-transformers folder's max_seq_length)",
        min=8,
    ),
    Param(
        "query_max_length",
        int,
        64,
        "token limit per query (never more than a sentence-transformers folder's max_seq_length)",
        min=4,
    ),
)

#: SpladePooling settings (``pooling_strategy``, ``activation_function``) this scorer applies.
POOLINGS = ("max", "sum")
ACTIVATIONS = ("relu", "log1p_relu")


def activate(logits: torch.Tensor, activation: str = "relu") -> torch.Tensor:
    """``log(1 + ReLU(x))``, applied twice over for ``log1p_relu`` (OpenSearch's SPLADE)."""
    w = torch.log1p(torch.relu(logits.float()))
    return torch.log1p(w) if activation == "log1p_relu" else w


def splade_weights(
    logits: torch.Tensor,
    attention_mask: torch.Tensor,
    pooling: str = "max",
    activation: str = "relu",
) -> torch.Tensor:
    """``max`` (or ``sum``) over unpadded tokens of ``log(1 + ReLU(logits))``: (batch, vocab)."""
    w = activate(logits, activation)
    w = w * attention_mask.unsqueeze(-1).to(w.dtype)  # w >= 0, so a zeroed pad never wins
    return w.sum(dim=1) if pooling == "sum" else w.max(dim=1).values


def splade_weights_by_text(
    model: torch.nn.Module,
    head: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    pooling: str = "max",
    activation: str = "relu",
) -> torch.Tensor:
    """:func:`splade_weights` without the (batch × length × vocab) logits tensor.

    The encoder runs on the whole batch; the head runs one text at a time on its unpadded
    tokens. log(1 + ReLU(·)) is monotone, so for ``max`` the max over tokens is taken on the
    logits and the transform applied to the (vocab,) maxima (``sum`` transforms each token
    first). A 32 × 128-token batch of a 30k-vocabulary model otherwise allocates three 0.5 GB
    tensors, and the page faults of those fresh allocations cost as much CPU as the arithmetic.
    """
    hidden = encoder_of(model)(**batch).last_hidden_state
    mask = batch["attention_mask"].bool()
    if pooling == "sum":
        sums = [activate(head(hidden[i][mask[i]]), activation).sum(dim=0) for i in range(len(mask))]
        return torch.stack(sums)
    maxima = [head(hidden[i][mask[i]]).amax(dim=0) for i in range(hidden.shape[0])]
    return activate(torch.stack(maxima), activation)


def read_sparse_encoder(path: Path) -> dict[str, Any]:
    """What a sentence-transformers SparseEncoder folder says about scoring: the transformer's
    folder, SpladePooling's strategy and activation, prompts (defaults for other folders)."""
    info: dict[str, Any] = {
        "transformer_path": path,
        "pooling": "max",
        "activation": "relu",
        "prompts": {},
        "is_st": False,
    }
    modules = read_st_modules(path)
    if modules is None or read_st_config(path).get("model_type") != "SparseEncoder":
        # a plain MLM folder, or another kind's sentence-transformers folder (a Θ0): its
        # transformer is read as a masked LM
        if modules:
            info["transformer_path"] = next((p for n, p in modules if n == "Transformer"), path)
        return info
    info["is_st"] = True
    check_st_modules(path, modules, "splade", ("Transformer", "MLMTransformer", "SpladePooling"))
    if not any(name == "SpladePooling" for name, _ in modules):
        raise CheckpointError(
            f"{path}: a SparseEncoder without SpladePooling is not supported by the splade scorer"
        )
    for name, mpath in modules:
        if name in ("Transformer", "MLMTransformer"):
            info["transformer_path"] = mpath
        elif name == "SpladePooling":
            cfg_file = mpath / "config.json"
            cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
            info["pooling"] = cfg.get("pooling_strategy", "max")
            info["activation"] = cfg.get("activation_function", "relu")
            if info["pooling"] not in POOLINGS or info["activation"] not in ACTIVATIONS:
                raise CheckpointError(
                    f"{cfg_file}: SpladePooling {info['pooling']}/{info['activation']} is not "
                    f"supported by the splade scorer (pooling {', '.join(POOLINGS)}; activation "
                    f"{', '.join(ACTIVATIONS)})"
                )
    info["prompts"] = read_st_config(path).get("prompts") or {}
    return info


class Splade(Scorer):
    cost_unit = "document"  # documents are encoded once per pass, then dot products
    #: OpenVINO fp32 encoded splade-tiny's documents 1.48× and 1.89× faster than torch fp32 in
    #: two runs on a 2-core AVX2 CPU, with identical NDCG@10 (max |Δ score| 2e-5) and an export
    #: won back after ~1,400 documents (docs/performance.md, "Compiled backends"); ``auto``
    #: still compiles only passes of ``EXPORT_COST.min_items`` or more, and falls back to
    #: torch where openvino is not installed or the first-batch check fails
    auto_backend = "openvino"

    def __init__(self, path: Path, options: Mapping[str, Any], settings: ScoringSettings):
        super().__init__(settings)
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        st = read_sparse_encoder(path)
        folder = st["transformer_path"]
        self.pooling, self.activation = st["pooling"], st["activation"]
        prompts = st["prompts"]
        # as SparseEncoder.encode_query / encode_document pick their prompts
        self.query_prefix = prompts.get("query") or ""
        self.doc_prefix = next(
            (prompts[k] for k in ("document", "passage", "corpus") if prompts.get(k) is not None),
            "",
        )
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = self.load_pretrained(AutoModelForMaskedLM, folder, report_missing=True)
        head = [k for k in self.newly_initialised if "embeddings" not in k]
        if head:
            self.warn(
                f"{path}: no trained MLM head ({len(head)} weights randomly initialised, e.g. "
                f"{head[0]}); SPLADE scores from this model are not meaningful"
            )
        limit = st_max_length(path, folder, self.tokenizer) if st["is_st"] else None
        self.max_length = min(options.get("max_length") or 256, limit or 1_000_000)
        self.query_max_length = min(options.get("query_max_length") or 64, self.max_length)

    def encode(self, texts: Sequence[str], max_length: int, name: str) -> torch.Tensor:
        self.warn_empty(texts, name)
        enc = tokenize(self.tokenizer, texts, None, max_length, self.truncation, name=name)

        forward = self.backend_forward(
            "term_weights",
            graph="term_weights_graph",
            config={"pooling": self.pooling, "activation": self.activation},
            items=len(texts),
        )
        with self.progress(len(texts), name, unit="text") as bar:
            return run_batches(
                self.tokenizer, enc, self.settings.batch_size, self.device, forward, bar
            )

    def term_weights(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """One batch's term weights (batch, vocab); torch runs the head one text at a time."""
        head = mlm_head(self.model)
        if head is not None:
            return splade_weights_by_text(self.model, head, batch, self.pooling, self.activation)
        return self.term_weights_graph(batch)

    def term_weights_graph(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The same weights from the whole batch's logits: what a compiled backend exports
        (torch.export cannot trace the per-text loop). For ``max`` the maximum is taken on
        the logits, pads set to the lowest value, and log(1 + ReLU(·)) — monotone, 0 there —
        applied to the (batch, vocab) maxima only."""
        logits = self.model(**batch).logits
        mask = batch["attention_mask"]
        if self.pooling == "max":
            low = torch.finfo(logits.dtype).min
            maxima = logits.masked_fill(mask.unsqueeze(-1) == 0, low).amax(dim=1)
            return activate(maxima, self.activation)
        return splade_weights(logits, mask, self.pooling, self.activation)

    def encode_queries(self, texts: Sequence[str]) -> torch.Tensor:
        """Term weights of queries, (n, vocab): the folder's query prompt put first."""
        return self.encode([self.query_prefix + t for t in texts], self.query_max_length, "queries")

    def encode_documents(self, texts: Sequence[str]) -> torch.Tensor:
        """Term weights of documents, (n, vocab): the folder's document prompt put first."""
        return self.encode([self.doc_prefix + t for t in texts], self.max_length, "documents")

    def rerank(
        self, queries: Mapping[str, str], candidates: Ranking, docs: Mapping[str, str]
    ) -> Ranking:
        qids = sorted(candidates)
        dids = sorted({d for q in qids for d in candidates[q]})
        q_w = self.encode_queries([queries[q] for q in qids])
        d_w = self.encode_documents([docs[d] for d in dids])
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
        q_w = self.encode_queries(q_texts)
        d_w = self.encode_documents(d_texts)
        self.log_truncation()
        q_row = {t: i for i, t in enumerate(q_texts)}
        d_row = {t: i for i, t in enumerate(d_texts)}
        qi = torch.tensor([q_row[p[0]] for p in pairs], dtype=torch.long)
        di = torch.tensor([d_row[p[1]] for p in pairs], dtype=torch.long)
        return (q_w[qi] * d_w[di]).sum(-1).tolist()

    def differentiable_scores(self, pairs: Sequence[tuple[str, str]]) -> torch.Tensor:
        """The scores of :meth:`score_pairs` with autograd on (AdaMerging): each distinct
        query and document encoded once, in one padded forward each, the head one text at a
        time as :meth:`term_weights` (so no batch × length × vocabulary tensor is kept for
        the backward pass)."""
        q_texts = list(dict.fromkeys(p[0] for p in pairs))
        d_texts = list(dict.fromkeys(p[1] for p in pairs))

        def weights(texts: list[str], max_length: int) -> torch.Tensor:
            batch = padded_batch(self.tokenizer, texts, max_length, self.device)
            return self.term_weights(batch).float()

        q_w = weights([self.query_prefix + t for t in q_texts], self.query_max_length)
        d_w = weights([self.doc_prefix + t for t in d_texts], self.max_length)
        return pair_dots(pairs, q_texts, q_w, d_texts, d_w)


def check(path: Path) -> None:
    st = read_sparse_encoder(path)
    read_model_config(
        st["transformer_path"], "splade", "a transformers folder with a masked-LM head"
    )


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
