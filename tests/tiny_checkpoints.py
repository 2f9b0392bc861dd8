"""Tiny, seeded checkpoints for the scorer tests, saved with ``save_pretrained``.

A word-level tokenizer over a fixed word list, and 2-layer models (T5, Llama,
BERT wrapped as sentence-transformers / cross-encoder folders) so every loading
path the scorers take is the real one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

from mergekit_ir.references.tiny_models import save_bert, word_tokenizer

WORDS = (
    "query",
    "document",
    "relevant",
    "is",
    "the",
    "a",
    "of",
    "and",
    "what",
    "how",
    "does",
    "cause",
    "protein",
    "cell",
    "cells",
    "gene",
    "genes",
    "cancer",
    "drug",
    "drugs",
    "treatment",
    "patients",
    "study",
    "studies",
    "results",
    "effect",
    "effects",
    "increase",
    "decrease",
    "risk",
    "disease",
    "blood",
    "brain",
    "mouse",
    "mice",
    "human",
    "expression",
    "level",
    "levels",
    "high",
    "low",
    "role",
    "in",
    "on",
    "with",
    "for",
    "to",
    "by",
    "from",
    "are",
    "was",
    "were",
    "not",
    "no",
    "yes",
    "true",
    "false",
    "answer",
    "question",
    "passage",
    ":",
    "?",
    ".",
    ",",
    "-",
    "(",
    ")",
)

VOCAB = tuple(w for w in WORDS if w.isalpha())
"""The words of ``WORDS`` without punctuation, for random test texts."""

T5_SPECIALS = ("<pad>", "</s>", "<unk>")
LLAMA_SPECIALS = ("<unk>", "<s>", "</s>")


def _word_level(
    words: Iterable[str], specials: Sequence[str], extra: Sequence[str], unk: str
) -> Tokenizer:
    vocab: dict[str, int] = {}
    for tok in [*specials, *extra, *sorted({w.lower() for w in words})]:
        vocab.setdefault(tok, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFD(), normalizers.Lowercase(), normalizers.StripAccents()]
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tok


def t5_tokenizer(
    words: Iterable[str] = WORDS, extra: Sequence[str] = ("▁true", "▁false")
) -> PreTrainedTokenizerFast:
    """T5-style: ``<pad>`` = 0 (also the decoder start), ``</s>`` = 1 appended to every input."""
    tok = _word_level(words, T5_SPECIALS, extra, "<unk>")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=512,
    )


def llama_tokenizer(words: Iterable[str] = WORDS) -> PreTrainedTokenizerFast:
    """Llama-style: ``<s>`` = 1 put before every input, no pad token."""
    tok = _word_level(words, LLAMA_SPECIALS, (), "<unk>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=512,
    )


def save_t5(
    folder: str | Path, seed: int = 0, extra: Sequence[str] = ("▁true", "▁false"), **config
) -> Path:
    tokenizer = t5_tokenizer(extra=extra)
    cfg = dict(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    cfg.update(config)
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(T5Config(**cfg)).eval()
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_llama(folder: str | Path, seed: int = 0) -> Path:
    tokenizer = llama_tokenizer()
    torch.manual_seed(seed)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=None,
            tie_word_embeddings=False,
        )
    ).eval()
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_sentence_transformer(
    folder: str | Path, seed: int = 0, max_seq_length: int = 24, dense: bool = False
) -> Path:
    """A tiny BERT wrapped as a sentence-transformers folder (mean pooling, [Dense,] Normalize)."""
    from sentence_transformers import SentenceTransformer

    try:  # sentence-transformers >= 6 moved the modules; the old path still works but warns
        import sentence_transformers.sentence_transformer.modules as st_models
    except ImportError:
        from sentence_transformers import models as st_models

    folder = Path(folder)
    bert = save_word_bert(folder.parent / f"{folder.name}-bert", seed)
    transformer = st_models.Transformer(str(bert), max_seq_length=max_seq_length)
    dim = (
        getattr(transformer, "get_embedding_dimension", None)
        or transformer.get_word_embedding_dimension
    )
    dim = dim()
    pooling = st_models.Pooling(dim, "mean")
    modules = [transformer, pooling]
    if dense:
        import torch

        torch.manual_seed(seed)
        modules.append(st_models.Dense(dim, 16, bias=False, activation_function=torch.nn.Tanh()))
    SentenceTransformer(modules=[*modules, st_models.Normalize()], device="cpu").save(str(folder))
    return folder


def save_word_bert(folder: str | Path, seed: int = 0, head: str = "base") -> Path:
    """A tiny BERT over ``WORDS`` (``head``: base, mlm or classifier)."""
    return save_bert(folder, word_tokenizer(WORDS), seed, head=head)


def save_cross_encoder(folder: str | Path, seed: int = 0) -> Path:
    """A tiny BERT with a one-logit classification head."""
    return save_word_bert(folder, seed, head="classifier")
