"""Where a masked-LM keeps its vocabulary head, so callers can run it on chosen rows only.

A 30k-vocabulary head on every token of a batch is most of the work (and, on CPU, of the
memory traffic) for small encoders: SPLADE needs the head's max over a text's real tokens,
masked-LM training its logits at the ~15 % masked positions. Both run the encoder
(``model.base_model``) and then :func:`mlm_head` on the rows they need.
"""

from __future__ import annotations

import torch

#: Attribute names of the MLM head in transformers' ``*ForMaskedLM`` classes (BERT: ``cls``;
#: RoBERTa, XLM-R, ModernBERT…: ``lm_head``). Others keep the full-logits path.
_HEAD_NAMES = ("cls", "lm_head")


def mlm_head(model: torch.nn.Module) -> torch.nn.Module | None:
    """The module mapping hidden states to vocabulary logits, when it has a known name (a PEFT
    wrapper is looked through)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    for name in _HEAD_NAMES:
        head = getattr(inner, name, None)
        if isinstance(head, torch.nn.Module):
            return head
    return None


def encoder_of(model: torch.nn.Module) -> torch.nn.Module:
    """The encoder under the head (``base_model``), through a PEFT wrapper."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.base_model
