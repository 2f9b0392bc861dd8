"""monoT5 scorer: a seq2seq model reads ``Query: q Document: d Relevant:`` and the score
is log P(true) from a softmax over the logits of the true and false tokens at the
first decoder step (one decoder step, no generation loop), as in pygaggle's MonoT5.

Which tokens mean true/false (``true_token``/``false_token`` = ``auto``), first match wins:

1. a hint in ``config.json``: ``"mergekit_ir": {"true_token": "▁yes", "false_token": "▁no"}``
   (a merged folder keeps the IR model's config, so the hint survives merging);
2. a known reranker named in the folder (``_name_or_path`` in config.json, or the model
   card README.md, e.g. ``base_model: unicamp-dl/mt5-base-mmarco-v2``): its published pair;
3. the architecture: mT5 (``model_type: mt5``) prefers ``▁yes``/``▁no``, others ``▁true``/``▁false``;
   if the preferred pair is not in the vocabulary, the other pair is used when it is.

Both tokens must each be one vocabulary entry; otherwise loading fails naming the token.
"""

from __future__ import annotations

import logging
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

log = logging.getLogger(__name__)

TEMPLATE = "Query: {query} Document: {document} Relevant:"

PARAMS = (
    Param(
        "true_token",
        str,
        "auto",
        "vocabulary entry (or word) meaning relevant; auto: see docs/scorers.md",
    ),
    Param("false_token", str, "auto", "vocabulary entry (or word) meaning not relevant"),
    Param(
        "max_length",
        int,
        512,
        "token limit of the whole input; the document gives way first",
        min=16,
    ),
    Param("query_max_length", int, 64, "token limit per query", min=1),
    Param(
        "doc_max_length",
        int,
        None,
        "token limit per document (default: what max_length leaves)",
        min=1,
    ),
    Param("template", str, TEMPLATE, "prompt with {query} and {document}"),
)

# Published (true, false) tokens of known seq2seq rerankers (pygaggle's table).
KNOWN_TOKENS: dict[str, tuple[str, str]] = {
    **{
        f"castorini/monot5-{s}": ("▁true", "▁false")
        for s in (
            "small-msmarco-10k",
            "small-msmarco-100k",
            "base-msmarco",
            "base-msmarco-10k",
            "large-msmarco",
            "large-msmarco-10k",
            "3b-msmarco",
            "3b-msmarco-10k",
            "base-med-msmarco",
            "3b-med-msmarco",
        )
    },
    **{
        f"unicamp-dl/{s}": ("▁yes", "▁no")
        for s in (
            "mt5-base-en-msmarco",
            "mt5-base-en-pt-msmarco-v1",
            "mt5-base-en-pt-msmarco-v2",
            "mt5-base-mmarco-v1",
            "mt5-base-mmarco-v2",
        )
    },
    **{
        f"unicamp-dl/{s}": ("▁sim", "▁não")
        for s in (
            "ptt5-base-pt-msmarco-10k-v1",
            "ptt5-base-pt-msmarco-100k-v1",
            "ptt5-base-en-pt-msmarco-10k-v1",
            "ptt5-base-pt-msmarco-10k-v2",
            "ptt5-base-pt-msmarco-100k-v2",
            "ptt5-base-en-pt-msmarco-100k-v2",
        )
    },
    "unicamp-dl/mt5-3B-mmarco-en-pt": ("▁true", "▁"),
    "unicamp-dl/mt5-13b-mmarco-100k": ("▁true", "▁"),
}
PAIRS = {"true": ("▁true", "▁false"), "yes": ("▁yes", "▁no")}


def auto_tokens(path: Path, config: Any, vocab: Mapping[str, int]) -> tuple[tuple[str, str], str]:
    """The (true, false) tokens for ``auto`` and why they were chosen."""
    hint = getattr(config, "mergekit_ir", None)
    if isinstance(hint, Mapping) and hint.get("true_token") and hint.get("false_token"):
        return (hint["true_token"], hint["false_token"]), "config.json mergekit_ir hint"
    names = [str(getattr(config, "_name_or_path", "") or "")]
    card = path / "README.md"
    if card.is_file():
        names.append(card.read_text(errors="replace")[:20000])
    for name, pair in sorted(KNOWN_TOKENS.items(), key=lambda kv: -len(kv[0])):
        if any(name.lower() in text.lower() for text in names):
            return pair, f"known reranker {name}"
    order = ("yes", "true") if config.model_type == "mt5" else ("true", "yes")
    for key in order:
        if all(t in vocab for t in PAIRS[key]):
            return PAIRS[key], f"model_type {config.model_type}"
    return PAIRS[order[0]], f"model_type {config.model_type}"


class MonoT5(Scorer):
    def __init__(self, path: Path, options: Mapping[str, Any], settings: ScoringSettings):
        super().__init__(settings)
        check(path)
        self.parts = parse_template(options.get("template") or TEMPLATE)
        from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        require_fast(self.tokenizer, path, "monot5")
        config = AutoConfig.from_pretrained(path)
        true_spec = options.get("true_token") or "auto"
        false_spec = options.get("false_token") or "auto"
        if "auto" in (true_spec, false_spec):
            (auto_true, auto_false), self.token_rule = auto_tokens(
                path, config, self.tokenizer.get_vocab()
            )
            true_spec = auto_true if true_spec == "auto" else true_spec
            false_spec = auto_false if false_spec == "auto" else false_spec
        else:
            self.token_rule = "scorer options"
        tail = next((p for p in reversed(self.parts) if isinstance(p, str)), "Relevant:").strip()
        self.true_id = resolve_token(self.tokenizer, true_spec, tail, "true_token", path)
        self.false_id = resolve_token(self.tokenizer, false_spec, tail, "false_token", path)
        if self.true_id == self.false_id:
            raise CheckpointError(
                f"{path}: true_token {true_spec!r} and false_token {false_spec!r} are the same token"
            )
        self.max_length = options.get("max_length") or 512
        self.limits = {
            "query": options.get("query_max_length"),
            "document": options.get("doc_max_length"),
        }
        if self.dtype == torch.float16 and config.model_type in ("t5", "mt5", "umt5"):
            log.warning(
                "%s: T5 models overflow in fp16 (NaN scores); use --dtype bf16 or fp32", path
            )
        self.model = self.load_pretrained(AutoModelForSeq2SeqLM, path)
        start = self.model.config.decoder_start_token_id
        self.decoder_start = start if start is not None else self.model.config.pad_token_id or 0

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids = batch["input_ids"]
        decoder = torch.full(
            (ids.shape[0], 1), self.decoder_start, dtype=torch.long, device=ids.device
        )
        logits = self.model(
            input_ids=ids, attention_mask=batch["attention_mask"], decoder_input_ids=decoder
        ).logits[:, 0, [self.true_id, self.false_id]]
        return torch.log_softmax(logits.float(), dim=-1)[:, 0]

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        self.warn_empty([p[0] for p in pairs], "queries")
        self.warn_empty([p[1] for p in pairs], "documents")
        enc = encode_template(
            self.tokenizer,
            self.parts,
            [{"query": q, "document": d} for q, d in pairs],
            self.limits,
            self.max_length,
            self.truncation,
        )
        forward = self.backend_forward(
            "forward",
            config={"true": self.true_id, "false": self.false_id, "start": self.decoder_start},
            items=len(pairs),
        )
        with self.progress(len(pairs), "monot5") as bar:
            scores = run_batches(
                self.tokenizer,
                {"input_ids": enc.input_ids},
                self.settings.batch_size,
                self.device,
                forward,
                bar,
            )
        self.log_truncation()
        return scores.tolist()


def check(path: Path) -> None:
    cfg = read_model_config(path, "monot5", "a T5/mT5-style seq2seq folder")
    if not getattr(cfg, "is_encoder_decoder", False):
        raise CheckpointError(
            f"{path}: a {cfg.model_type} model is not seq2seq (encoder-decoder); scorer kind 'monot5' "
            "needs a T5/mT5-style checkpoint (use 'cross-encoder' or 'bi-encoder' for encoders, "
            "'causal-lm' for decoder-only models)"
        )


@hookimpl
def register_scorers(register):
    register(
        ScorerKind(
            name="monot5",
            description="seq2seq reranker (monoT5/mT5): log P(true) over the true/false tokens at the first decoder step",
            load=MonoT5,
            params=PARAMS,
            check=check,
        )
    )
