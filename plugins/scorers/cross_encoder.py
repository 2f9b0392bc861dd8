"""Cross-encoder scorer: one forward pass per (query, document) pair, the logit is the score.

Matches ``sentence_transformers.CrossEncoder`` tokenisation (pair input, longest-first
truncation). Scores are raw logits (monotone in CrossEncoder's sigmoid output).
With ``query_max_length`` set, the query is cut to that many tokens first and only
the document gives way to ``max_length``. A sentence-transformers CrossEncoder folder
(``modules.json``) is read as ``CrossEncoder`` reads it: its transformer module, and
never more tokens than its max_seq_length.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mergekit_ir import (
    CheckpointError,
    ConfigError,
    Param,
    Scorer,
    ScorerKind,
    ScoringSettings,
    hookimpl,
    read_model_config,
    require_fast,
    run_batches,
    tokenize,
    truncate_texts,
)
from mergekit_ir_plugins.scorers.bi_encoder import (
    check_st_modules,
    read_st_config,
    read_st_modules,
    st_max_length,
)

PARAMS = (
    Param(
        "max_length",
        int,
        512,
        "token limit per (query, document) pair (never more than a sentence-transformers "
        "folder's max_seq_length)",
        min=8,
    ),
    Param(
        "label",
        int,
        None,
        "which output logit is 'relevant' (default: 0 for one output, else 1)",
        min=0,
    ),
    Param(
        "query_max_length",
        int,
        None,
        "token limit per query; then only the document is truncated (default: none, longest-first "
        "truncation of the pair as in sentence-transformers)",
        min=1,
    ),
)


def read_cross_encoder_folder(path: Path) -> tuple[Path, bool]:
    """(the transformer's folder, whether it is a sentence-transformers CrossEncoder).

    A CrossEncoder folder may hold only its transformer: a module after it (a LogitScore
    of a causal-LM reranker, a Dense) would change the score, so it is refused. Other
    sentence-transformers folders (a bi-encoder as Θ0) are read for their transformer only.
    """
    modules = read_st_modules(path)
    if modules is None:
        return path, False
    is_ce = read_st_config(path).get("model_type") == "CrossEncoder"
    if is_ce:
        check_st_modules(path, modules, "cross-encoder", ("Transformer",))
        if read_st_config(path).get("default_prompt_name"):
            raise CheckpointError(
                f"{path}: a CrossEncoder with a default prompt is not supported by the "
                "cross-encoder scorer (its scores would differ from CrossEncoder.predict)"
            )
    transformer = next((p for name, p in modules if name == "Transformer"), path)
    return transformer, is_ce


class CrossEncoder(Scorer):
    openvino_from_torch = True  # measured faster than the ONNX route: Scorer.openvino_from_torch
    #: OpenVINO fp32 (converted from the torch program) scored all-MiniLM-L6-v2's pairs
    #: 1.18–1.25× faster than torch fp32 in two idle runs on a 2-core AVX2 CPU, exactly (max
    #: |diff| ≤ 2e-7), an export of ~9–10 s won back after ~1,100 pairs
    #: (docs/performance.md, "OpenVINO from the torch program"); ``auto`` compiles only
    #: passes of ``EXPORT_COST.min_items`` or more, and stays torch without openvino
    auto_backend = "openvino"

    def __init__(self, path: Path, options: Mapping[str, Any], settings: ScoringSettings):
        super().__init__(settings)
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        folder, is_ce = read_cross_encoder_folder(path)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = self.load_pretrained(
            AutoModelForSequenceClassification, folder, report_missing=True
        )
        self.check_head(path)
        n = self.model.config.num_labels
        self.label = options.get("label")
        if self.label is None:
            self.label = 0 if n == 1 else 1
        if self.label >= n:
            raise CheckpointError(
                f"{path}: scorer option label={self.label} but the model has {n} output(s)"
            )
        limit = getattr(self.model.config, "max_position_embeddings", 512)
        if is_ce:  # as CrossEncoder: its max_seq_length (the tokenizer's) bounds the pair
            limit = min(limit, st_max_length(path, folder, self.tokenizer) or limit)
        self.max_length = min(options.get("max_length") or 512, limit)
        self.query_max_length = options.get("query_max_length")
        if self.query_max_length is not None:
            require_fast(self.tokenizer, path, "cross-encoder")
            room = self.max_length - self.tokenizer.num_special_tokens_to_add(pair=True) - 1
            if self.query_max_length > room:
                raise ConfigError(
                    f"scorer option query_max_length={self.query_max_length}: leaves no room for the "
                    f"document within max_length={self.max_length}; use at most {room}"
                )

    def check_head(self, path: Path) -> None:
        """A folder without a trained classification head scores with a random one: say so.

        Θ0 and ΘD are often plain encoders (an MLM checkpoint); transformers then
        initialises ``classifier.*`` at random and the rows mean nothing. Warn once per
        checkpoint (log and ``self.warnings``, for the report notes); refuse when strict.
        """
        heads = ("classifier", "score", "head")  # name the head first, then the rest
        missing = sorted(self.newly_initialised, key=lambda k: (not any(h in k for h in heads), k))
        if not missing:
            return
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        what = (
            f"{path}: no trained classification head ({', '.join(missing[:3])}{more} "
            "initialised at random), so its cross-encoder scores are meaningless"
        )
        self.refuse_if_strict(what, "use a checkpoint fine-tuned as a cross-encoder")

    def logit(self, batch: dict[str, Any]) -> Any:
        """One batch's scores (the 'relevant' logit): the graph a compiled backend exports."""
        return self.model(**batch).logits[:, self.label]

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        queries = [p[0] for p in pairs]
        docs = [p[1] for p in pairs]
        self.warn_empty(queries, "queries")
        self.warn_empty(docs, "documents")
        if self.query_max_length is None:
            enc = tokenize(
                self.tokenizer, queries, docs, self.max_length, self.truncation, name="pairs"
            )
        else:
            queries = truncate_texts(
                self.tokenizer, queries, self.query_max_length, self.truncation, "queries"
            )
            enc = tokenize(
                self.tokenizer,
                queries,
                docs,
                self.max_length,
                self.truncation,
                truncation="only_second",
                name="documents",
            )
        forward = self.backend_forward("logit", config={"label": self.label}, items=len(pairs))
        with self.progress(len(pairs), "cross-encoder") as bar:
            logits = run_batches(
                self.tokenizer, enc, self.settings.batch_size, self.device, forward, bar
            )
        self.log_truncation()
        return logits.tolist()

    def differentiable_scores(self, pairs: Sequence[tuple[str, str]]) -> Any:
        """The scores of :meth:`score_pairs` with autograd on (AdaMerging), one padded forward."""
        queries = [p[0] for p in pairs]
        docs = [p[1] for p in pairs]
        truncation: bool | str = True
        if self.query_max_length is not None:
            queries = truncate_texts(self.tokenizer, queries, self.query_max_length, None)
            truncation = "only_second"
        enc = self.tokenizer(
            queries,
            docs,
            truncation=truncation,
            max_length=self.max_length,
            padding=True,
            return_tensors="pt",
        )
        batch = {
            k: v.to(self.device)
            for k, v in enc.items()
            if k in ("input_ids", "attention_mask", "token_type_ids")
        }
        return self.model(**batch).logits[:, self.label].float()


def check(path: Path) -> None:
    folder, _ = read_cross_encoder_folder(path)
    cfg = read_model_config(folder, "cross-encoder")
    if cfg.is_encoder_decoder:
        raise CheckpointError(
            f"{path}: a {cfg.model_type} seq2seq model cannot be a cross-encoder; use scorer kind 'monot5'"
        )


def caveat(path: Path) -> str | None:
    """A folder whose config names no sequence-classification head: transformers would
    initialise one at random (the same rule ``check_head`` applies after loading)."""
    cfg = read_model_config(path, "cross-encoder")
    archs = list(getattr(cfg, "architectures", None) or [])
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return None
    named = ", ".join(archs) or "no architecture"
    return (
        f"{path}: {named}, not a sequence classifier: no trained classification head, so its "
        "cross-encoder scores would be meaningless"
    )


@hookimpl
def register_scorers(register):
    register(
        ScorerKind(
            name="cross-encoder",
            description="(query, document) pair through AutoModelForSequenceClassification; the logit is the score",
            load=CrossEncoder,
            params=PARAMS,
            check=check,
            caveat=caveat,
        )
    )
