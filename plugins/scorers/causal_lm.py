"""Decoder-only (causal LM) pointwise scorer, one forward pass per batch.

Modes:

- ``query_likelihood`` (default): the mean (or sum) log-probability of the query's
  tokens after the document, with the prompt ``Document: {document} Query: {query}``
  — how a zero-shot LLM such as Llama-2 re-ranks. The document is cut to
  ``doc_max_length`` tokens (256) and the query to ``query_max_length`` (128).
- ``relevance_token``: the logit of a yes-token right after a prompt that asks
  whether the document is relevant (with ``no_token`` set: log P(yes) over the
  yes/no pair).

Batches are left-padded with explicit ``position_ids``, so every sequence ends at
the last column: the model is asked only for the logits of the last columns the
query spans (``logits_to_keep``), and the log-softmax runs in fp32 on those rows
alone. Weights load in the run's dtype (bf16 on CUDA by default) with SDPA attention;
nothing upcasts the model, so a 7B model in bf16 fits one GPU.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from mergekit_ir import (
    CheckpointError,
    Param,
    Scorer,
    ScorerKind,
    ScoringSettings,
    encode_template,
    hookimpl,
    parse_template,
    read_model_config,
    require_fast,
    resolve_token,
    run_batches,
)

TEMPLATES = {
    "query_likelihood": "Document: {document} Query: {query}",
    "relevance_token": "Document: {document}\nQuery: {query}\nIs the document relevant to the query? Answer:",
}

PARAMS = (
    Param(
        "mode",
        str,
        "query_likelihood",
        "query_likelihood or relevance_token",
        choices=tuple(TEMPLATES),
    ),
    Param(
        "template", str, None, "prompt with {query} and {document} (default: per mode, see docs)"
    ),
    Param("doc_max_length", int, 256, "token limit per document", min=1),
    Param("query_max_length", int, 128, "token limit per query", min=1),
    Param(
        "reduction",
        str,
        "mean",
        "query_likelihood: mean or sum of the query-token log-probs",
        choices=("mean", "sum"),
    ),
    Param("yes_token", str, "yes", "relevance_token: the token (or word) whose logit is the score"),
    Param(
        "no_token", str, None, "relevance_token: with it, the score is log P(yes) over {yes, no}"
    ),
)


class CausalLM(Scorer):
    def __init__(self, path: Path, options: Mapping[str, Any], settings: ScoringSettings):
        super().__init__(settings)
        check(path)
        self.mode = options.get("mode") or "query_likelihood"
        self.parts = parse_template(options.get("template") or TEMPLATES[self.mode])
        self.reduction = options.get("reduction") or "mean"
        self.limits = {
            "query": options.get("query_max_length") or 128,
            "document": options.get("doc_max_length") or 256,
        }
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        require_fast(self.tokenizer, path, "causal-lm")
        self.yes_id = self.no_id = None
        if self.mode == "relevance_token":
            tail = next((p for p in reversed(self.parts) if isinstance(p, str)), "Answer:").strip()
            self.yes_id = resolve_token(
                self.tokenizer, options.get("yes_token") or "yes", tail, "yes_token", path
            )
            if options.get("no_token"):
                self.no_id = resolve_token(
                    self.tokenizer, options["no_token"], tail, "no_token", path
                )
        self.model = self.load_pretrained(AutoModelForCausalLM, path)
        accepted = inspect.signature(self.model.forward).parameters
        self._positions = "position_ids" in accepted
        self._keep = "logits_to_keep" in accepted

    def _logits(self, batch: dict[str, torch.Tensor], keep: int) -> torch.Tensor:
        """Logits of the last ``keep`` columns (B, keep, V), in the model's dtype."""
        mask = batch["attention_mask"]
        kwargs: dict[str, Any] = {
            "input_ids": batch["input_ids"],
            "attention_mask": mask,
            "use_cache": False,
        }
        if self._positions:
            kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
        if self._keep:
            kwargs["logits_to_keep"] = keep
        logits = self.model(**kwargs).logits
        return logits[:, -keep:]

    def _query_likelihood(self, batch: dict[str, Any]) -> torch.Tensor:
        ids = batch["input_ids"]
        n, width = ids.shape
        lengths = batch["attention_mask"].sum(-1).tolist()
        rows, cols = [], []
        keep = 1
        for b, ((qs, qe), length) in enumerate(zip(batch["spans"], lengths, strict=True)):
            first = max(qs, 1)  # a token at position 0 has nothing to be predicted from
            keep = max(keep, length - first + 1)
            pad = width - length
            for t in range(first, qe):
                rows.append(b)
                cols.append(pad + t)
        keep = min(keep, width)
        if not rows:
            return torch.zeros(n)
        logits = self._logits(batch, keep)
        rows_t = torch.tensor(rows, device=ids.device)
        cols_t = torch.tensor(cols, device=ids.device)
        targets = ids[rows_t, cols_t]
        # The logits in the column before a token predict it; only those rows go to fp32.
        picked = logits[rows_t, cols_t - 1 - (width - keep)].float()
        logp = picked.gather(-1, targets.view(-1, 1)).squeeze(-1) - torch.logsumexp(picked, dim=-1)
        total = torch.zeros(n, device=ids.device).index_add_(0, rows_t, logp)
        if self.reduction == "sum":
            return total
        count = torch.zeros(n, device=ids.device).index_add_(0, rows_t, torch.ones_like(logp))
        return total / count.clamp(min=1)  # an empty query: log P(nothing) = 0

    def _relevance(self, batch: dict[str, Any]) -> torch.Tensor:
        last = self._logits(batch, 1)[:, -1].float()
        if self.no_id is None:
            return last[:, self.yes_id]
        return torch.log_softmax(last[:, [self.yes_id, self.no_id]], dim=-1)[:, 0]

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        self.warn_empty([p[0] for p in pairs], "queries")
        self.warn_empty([p[1] for p in pairs], "documents")
        enc = encode_template(
            self.tokenizer,
            self.parts,
            [{"query": q, "document": d} for q, d in pairs],
            self.limits,
            None,
            self.truncation,
        )
        if self.mode == "query_likelihood":  # per-row query spans: torch only
            fn = self._query_likelihood
        else:
            fn = self.backend_forward(
                "_relevance",
                config={"yes": self.yes_id, "no": self.no_id, "positions": self._positions},
                items=len(pairs),
            )
        with self.progress(len(pairs), f"causal-lm {self.mode}") as bar:
            scores = run_batches(
                self.tokenizer,
                {"input_ids": enc.input_ids},
                self.settings.batch_size,
                self.device,
                fn,
                bar,
                padding_side="left",
                extra={"spans": [s["query"] for s in enc.spans]},
            )
        self.log_truncation()
        return scores.tolist()


def check(path: Path) -> None:
    cfg = read_model_config(path, "causal-lm", "a decoder-only model folder")
    if getattr(cfg, "is_encoder_decoder", False):
        raise CheckpointError(
            f"{path}: a {cfg.model_type} seq2seq model is not decoder-only; use scorer kind 'monot5'"
        )
    archs = list(getattr(cfg, "architectures", None) or [])
    if archs and not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        raise CheckpointError(
            f"{path}: {archs[0]} is not a causal language model; scorer kind 'causal-lm' needs a "
            "*ForCausalLM checkpoint (use 'cross-encoder' or 'bi-encoder' for encoders)"
        )


@hookimpl
def register_scorers(register):
    register(
        ScorerKind(
            name="causal-lm",
            description="decoder-only LM: mean log-prob of the query given the document (query likelihood) or a yes-token logit",
            load=CausalLM,
            params=PARAMS,
            check=check,
        )
    )
