"""Tiny, deterministic checkpoints in real Hugging Face formats.

Used by the offline quickstart and by tests: a word-level tokenizer built from a
word list, and 2-layer models created from a config with a fixed seed and saved
with ``save_pretrained`` (safetensors), so every loading path is the real one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import BertConfig, PreTrainedTokenizerFast

BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def word_tokenizer(
    words: Iterable[str], specials: Sequence[str] = BERT_SPECIALS, bert_style: bool = True
) -> PreTrainedTokenizerFast:
    """A lower-casing word-level tokenizer over ``words`` (plus special tokens)."""
    vocab: dict[str, int] = {}
    for tok in [*specials, *sorted({w.lower() for w in words})]:
        vocab.setdefault(tok, len(vocab))
    unk = "[UNK]" if "[UNK]" in vocab else specials[1]
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFD(), normalizers.Lowercase(), normalizers.StripAccents()]
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    if bert_style:
        cls, sep = vocab["[CLS]"], vocab["[SEP]"]
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tok,
            unk_token="[UNK]",
            pad_token="[PAD]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
            model_max_length=128,
            model_input_names=["input_ids", "token_type_ids", "attention_mask"],
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token=unk, pad_token=specials[0], model_max_length=128
    )


def bert_config(vocab_size: int, **overrides) -> BertConfig:
    cfg = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        type_vocab_size=2,
    )
    cfg.update(overrides)
    return BertConfig(**cfg)


def save_bert(
    folder: str | Path,
    tokenizer: PreTrainedTokenizerFast,
    seed: int,
    head: str = "base",
    base_state: dict[str, torch.Tensor] | None = None,
    noise: float = 0.0,
    **config_overrides,
) -> Path:
    """Save a tiny BERT (``head``: base, mlm or classifier) with a fixed seed.

    With ``base_state`` the weights start from that state dict (by name, where
    shapes agree) plus Gaussian ``noise`` drawn from ``seed``: a stand-in for
    fine-tuning that keeps the models related, as real triplets are.
    """
    from transformers import BertForMaskedLM, BertForSequenceClassification, BertModel

    cls = {"base": BertModel, "mlm": BertForMaskedLM, "classifier": BertForSequenceClassification}[
        head
    ]
    extra = {"num_labels": 1} if head == "classifier" else {}
    torch.manual_seed(seed)
    model = cls(bert_config(len(tokenizer), **extra, **config_overrides)).eval()
    if base_state is not None:
        gen = torch.Generator().manual_seed(seed)
        own = model.state_dict()
        with torch.no_grad():
            for name, t in own.items():
                key = _match(name, base_state)
                if key is not None and base_state[key].shape == t.shape and t.is_floating_point():
                    t.copy_(base_state[key] + noise * torch.randn(t.shape, generator=gen))
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _match(name: str, state: dict[str, torch.Tensor]) -> str | None:
    if name in state:
        return name
    for prefix in ("bert.",):
        if name.startswith(prefix) and name[len(prefix) :] in state:
            return name[len(prefix) :]
        if prefix + name in state:
            return prefix + name
    return None
