"""Cross-encoder scorer: one forward pass per (query, document) pair, the logit is the score.

Matches ``sentence_transformers.CrossEncoder`` tokenisation (pair input, longest-first
truncation). Scores are raw logits (monotone in CrossEncoder's sigmoid output).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from mergekit_ir import Param, Scorer, ScorerKind, ScoringSettings, hookimpl
from mergekit_ir.errors import CheckpointError
from mergekit_ir.text_batches import run_batches, tokenize

PARAMS = (
    Param("max_length", int, 512, "token limit per (query, document) pair", min=8),
    Param("label", int, None, "which output logit is 'relevant' (default: 0 for one output, else 1)", min=0),
)


class CrossEncoder(Scorer):
    def __init__(self, path: Path, options: Mapping[str, Any], settings: ScoringSettings):
        super().__init__(settings)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path, dtype=self.dtype)
        self.model.to(self.device).eval()
        n = self.model.config.num_labels
        self.label = options.get("label")
        if self.label is None:
            self.label = 0 if n == 1 else 1
        if self.label >= n:
            raise CheckpointError(f"{path}: scorer option label={self.label} but the model has {n} output(s)")
        limit = getattr(self.model.config, "max_position_embeddings", 512)
        self.max_length = min(options.get("max_length") or 512, limit)

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        enc = tokenize(self.tokenizer, [p[0] for p in pairs], [p[1] for p in pairs],
                       self.max_length, self.truncation)
        with self.progress(len(pairs), "cross-encoder") as bar:
            logits = run_batches(self.tokenizer, enc, self.settings.batch_size, self.device,
                                 lambda b: self.model(**b).logits[:, self.label], bar)
        return logits.tolist()


def check(path: Path) -> None:
    try:
        cfg = AutoConfig.from_pretrained(path)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a transformers checkpoint ({exc})") from None
    if cfg.is_encoder_decoder:
        raise CheckpointError(f"{path}: a {cfg.model_type} seq2seq model cannot be a cross-encoder; use scorer kind 'monot5'")


@hookimpl
def register_scorers(register):
    register(ScorerKind(
        name="cross-encoder",
        description="(query, document) pair through AutoModelForSequenceClassification; the logit is the score",
        load=CrossEncoder,
        params=PARAMS,
        check=check,
    ))
