"""Which pre-training objective continues a checkpoint, and the one transformers lacks: T5 span corruption.

``auto`` follows the architecture, as the paper's ΘD models were made: masked LM for
encoders, span corruption for T5/mT5, causal LM for decoders. Span corruption is a pure
function of (tokens, random source) so it is tested against hand-worked examples.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from mergekit_ir.errors import ConfigError

OBJECTIVES = ("auto", "mlm", "span", "clm")
_T5_TYPES = {"t5", "mt5", "umt5", "longt5"}


def architecture_objective(config: Any) -> str:
    """The objective a checkpoint's architecture was pre-trained with."""
    model_type = getattr(config, "model_type", "")
    if model_type in _T5_TYPES:
        return "span"
    if getattr(config, "is_encoder_decoder", False):
        return "span"
    archs = getattr(config, "architectures", None) or []
    if getattr(config, "is_decoder", False) and model_type not in ("bert", "roberta"):
        return "clm"
    if any(a.endswith("ForCausalLM") for a in archs):
        return "clm"
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "mlm"
    return "clm"


def choose_objective(config: Any, requested: str, where: str, flag: str = "--objective") -> str:
    """``requested`` (or the architecture's own for ``auto``); an objective that cannot fit is an
    error (``flag``: how the message names the setting, a CLI flag or a registry key)."""
    if requested not in OBJECTIVES:
        raise ConfigError(f"{where}: objective {requested!r}: use one of {', '.join(OBJECTIVES)}")
    native = architecture_objective(config)
    if requested == "auto":
        return native
    fits = {"span": native == "span", "mlm": native == "mlm", "clm": native == "clm"}
    if not fits[requested]:
        raise ConfigError(
            f"{where}: objective {requested!r} does not fit a {config.model_type} checkpoint "
            f"(its architecture trains with {native!r}); use {flag} auto or {native}"
        )
    return requested


# -- span corruption ----------------------------------------------------------------------


def _segments(n_items: int, n_segments: int, rng: random.Random) -> list[int]:
    """Split ``n_items`` into ``n_segments`` positive lengths, uniformly at random."""
    cuts = sorted(rng.sample(range(1, n_items), n_segments - 1))
    bounds = [0, *cuts, n_items]
    return [b - a for a, b in zip(bounds, bounds[1:], strict=False)]


def noise_mask(
    length: int, rng: random.Random, noise_density: float = 0.15, mean_span: float = 3.0
) -> list[bool]:
    """T5's random spans: round(length·density) noise tokens in round(noise/mean_span) spans.

    Noise and non-noise spans alternate, the sequence starting with non-noise, as in
    T5's ``random_spans_noise_mask``.
    """
    if length < 2:
        raise ValueError("span corruption needs at least 2 tokens")
    n_noise = min(max(round(length * noise_density), 1), length - 1)
    n_spans = max(min(round(n_noise / mean_span), n_noise, length - n_noise), 1)
    noise = _segments(n_noise, n_spans, rng)
    keep = _segments(length - n_noise, n_spans, rng)
    mask: list[bool] = []
    for k, z in zip(keep, noise, strict=True):
        mask += [False] * k + [True] * z
    return mask


def apply_spans(
    tokens: Sequence[int], mask: Sequence[bool], sentinels: Sequence[int], eos: int
) -> tuple[list[int], list[int]]:
    """(inputs, targets): each noise span becomes one sentinel in the inputs and
    ``sentinel + span`` in the targets; both end with ``eos``."""
    inputs: list[int] = []
    targets: list[int] = []
    span = -1
    for i, (tok, noisy) in enumerate(zip(tokens, mask, strict=True)):
        if noisy:
            if i == 0 or not mask[i - 1]:
                span += 1
                if span >= len(sentinels):
                    raise ValueError(f"more noise spans than the {len(sentinels)} sentinel tokens")
                inputs.append(sentinels[span])
                targets.append(sentinels[span])
            targets.append(tok)
        else:
            inputs.append(tok)
    return [*inputs, eos], [*targets, eos]


def span_corruption(
    tokens: Sequence[int],
    sentinels: Sequence[int],
    eos: int,
    rng: random.Random,
    noise_density: float = 0.15,
    mean_span: float = 3.0,
) -> tuple[list[int], list[int]]:
    """T5 span corruption of one block of token ids."""
    return apply_spans(
        tokens, noise_mask(len(tokens), rng, noise_density, mean_span), sentinels, eos
    )


def sentinel_ids(tokenizer: Any, where: str) -> list[int]:
    """``<extra_id_0>``, ``<extra_id_1>``… as ids; a tokenizer without them cannot do span corruption."""
    vocab = tokenizer.get_vocab()
    ids = []
    while f"<extra_id_{len(ids)}>" in vocab:
        ids.append(vocab[f"<extra_id_{len(ids)}>"])
    if not ids:
        raise ConfigError(
            f"{where}: the tokenizer has no sentinel tokens <extra_id_N>; span corruption needs them "
            "(use a T5/mT5 tokenizer)"
        )
    return ids
