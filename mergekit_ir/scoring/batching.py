"""Tokenise once, then feed the model length-sorted, padded batches.

Two ways in:

- :func:`tokenize` — the tokenizer's own single-text or text-pair encoding (what
  sentence-transformers does), truncated to one limit;
- :func:`encode_template` — a prompt template such as
  ``Query: {query} Document: {document} Relevant:`` tokenised as one string (so
  the tokens at every boundary are the ones the model saw in training), with each
  field then cut to its own token limit and the template itself always kept.

Both return plain lists; :func:`run_batches` cuts them into batches of similar
length (:func:`mergekit_ir.scoring.scorer.length_sorted_batches`), pads each batch only
to its own longest input, runs the model under ``torch.inference_mode()`` and puts
results back in input order.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mergekit_ir.errors import CheckpointError, ConfigError
from mergekit_ir.scoring.scorer import TruncationStats, length_sorted_batches

# The value padding takes per model input (input_ids: the tokenizer's pad id).
_PAD_VALUES = {"attention_mask": 0, "token_type_ids": 0, "special_tokens_mask": 1}
_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def pad_token_id(tokenizer: Any) -> int:
    """The pad id, else the eos id (decoder-only models often have no pad token), else 0."""
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            return value
    return 0


def require_fast(tokenizer: Any, path: Any, kind: str) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise CheckpointError(
            f"{path}: scorer kind '{kind}' needs a fast tokenizer (tokenizer.json) for per-field "
            "truncation; save the tokenizer with a recent transformers to create one"
        )


def tokenize(
    tokenizer: Any,
    first: Sequence[str],
    second: Sequence[str] | None,
    max_length: int,
    stats: TruncationStats | None = None,
    truncation: bool | str = True,
    name: str = "text",
) -> dict[str, list]:
    """Tokenise texts (or text pairs) once without padding, counting truncations under ``name``.

    With a fast tokenizer the count comes from the same pass (an encoding cut to
    ``max_length`` carries overflowing tokens); a slow one is asked twice.
    """
    args = (list(first),) if second is None else (list(first), list(second))
    enc = tokenizer(*args, truncation=truncation, max_length=max_length, padding=False)
    if stats is not None:
        encodings = getattr(enc, "encodings", None)
        if encodings:
            stats.record([bool(e.overflowing) for e in encodings], name)
        else:
            full = tokenizer(*args, truncation=False, padding=False, verbose=False)
            stats.add([len(ids) for ids in full["input_ids"]], max_length, name)
    return {k: enc[k] for k in _MODEL_INPUTS if k in enc}


def truncate_texts(
    tokenizer: Any,
    texts: Sequence[str],
    limit: int | None,
    stats: TruncationStats | None = None,
    name: str = "text",
) -> list[str]:
    """Cut each text after its ``limit``-th token (a text-level cut at a token boundary)."""
    texts = list(texts)
    if limit is None:
        if stats is not None:
            stats.record([False] * len(texts), name)
        return texts
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    flags = []
    out = []
    for text, offsets in zip(texts, enc["offset_mapping"], strict=True):
        cut = len(offsets) > limit
        flags.append(cut)
        out.append(text[: offsets[limit - 1][1]] if cut and limit > 0 else ("" if cut else text))
    if stats is not None:
        stats.record(flags, name)
    return out


def resolve_token(tokenizer: Any, spec: str, context: str, option: str, path: Any) -> int:
    """Id of one token given as a vocabulary entry (``▁true``) or as a word (``true``).

    A word is tokenised as it would follow ``context`` (so ``true`` becomes ``▁true``
    for SentencePiece, ``Ġtrue`` for byte-level BPE) and must be exactly one token.
    """
    vocab = tokenizer.get_vocab()
    if spec in vocab and (spec[:1] in ("▁", "Ġ") or not spec.strip()):
        return vocab[spec]
    base = tokenizer(context, add_special_tokens=False)["input_ids"]
    full = tokenizer(f"{context} {spec}", add_special_tokens=False)["input_ids"]
    pieces = (
        full[len(base) :]
        if full[: len(base)] == base
        else tokenizer(spec, add_special_tokens=False)["input_ids"]
    )
    unk = tokenizer.unk_token_id
    if len(pieces) == 1 and pieces[0] != unk:
        return pieces[0]
    if spec in vocab:
        return vocab[spec]
    shown = ", ".join(repr(t) for t in tokenizer.convert_ids_to_tokens(pieces))
    if not pieces or all(p == unk for p in pieces):
        raise CheckpointError(
            f"{path}: {option} {spec!r} is not in the tokenizer's vocabulary; "
            f"set scorer option {option} to a single vocabulary entry"
        )
    raise CheckpointError(
        f"{path}: {option} {spec!r} is not one token: it splits into {len(pieces)} pieces ({shown}); "
        f"set scorer option {option} to a single vocabulary entry"
    )


# -- prompt templates ---------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{(query|document)\}")


def parse_template(
    template: str, option: str = "template", required: Sequence[str] = ("query", "document")
) -> list[str | tuple[str]]:
    """Split a template into literal text and ``(field,)`` placeholders."""
    parts: list[str | tuple[str]] = []
    pos = 0
    seen = []
    for m in _PLACEHOLDER.finditer(template):
        if m.start() > pos:
            parts.append(template[pos : m.start()])
        parts.append((m.group(1),))
        seen.append(m.group(1))
        pos = m.end()
    if pos < len(template):
        parts.append(template[pos:])
    for f in required:
        if seen.count(f) != 1:
            raise ConfigError(
                f"scorer option {option}: {template!r} must contain {{{f}}} exactly once "
                f"(placeholders: {', '.join('{' + r + '}' for r in required)})"
            )
    return parts


def fill_template(
    parts: Sequence[str | tuple[str]], values: Mapping[str, str]
) -> tuple[str, dict[str, tuple[int, int]]]:
    """The filled text and each field's character span in it (no ``str.format``: texts may hold braces)."""
    chunks: list[str] = []
    spans: dict[str, tuple[int, int]] = {}
    pos = 0
    for part in parts:
        text = values[part[0]] if isinstance(part, tuple) else part
        if isinstance(part, tuple):
            spans[part[0]] = (pos, pos + len(text))
        chunks.append(text)
        pos += len(text)
    return "".join(chunks), spans


@dataclass
class TemplateEncoding:
    """Token ids per filled template and where each field's kept tokens lie in them."""

    input_ids: list[list[int]]
    spans: list[dict[str, tuple[int, int]]]  # field -> [start, end) token positions


def encode_template(
    tokenizer: Any,
    parts: Sequence[str | tuple[str]],
    rows: Sequence[Mapping[str, str]],
    limits: Mapping[str, int | None],
    max_length: int | None = None,
    stats: TruncationStats | None = None,
    shrink: Sequence[str] = ("document", "query"),
    names: Mapping[str, str] | None = None,
) -> TemplateEncoding:
    """Tokenise filled templates whole, then cut each field to its token limit.

    The whole string is tokenised once (special tokens as the tokenizer adds them),
    each token is assigned to the field whose characters it covers, and a field's
    tokens past ``limits[field]`` are dropped; template and special tokens are
    always kept. If the result is still longer than ``max_length``, the fields in
    ``shrink`` lose tokens from their end, in that order. Truncation is counted
    per field (``names`` maps a field to its name in ``stats``).
    """
    names = names or {"query": "queries", "document": "documents"}
    filled = [fill_template(parts, row) for row in rows]
    enc = tokenizer(
        [t for t, _ in filled],
        add_special_tokens=True,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
        truncation=False,
        verbose=False,
    )
    fields = [p[0] for p in parts if isinstance(p, tuple)]
    out_ids: list[list[int]] = []
    out_spans: list[dict[str, tuple[int, int]]] = []
    flags: dict[str, list[bool]] = {f: [] for f in fields}
    for i, (_, char_spans) in enumerate(filled):
        ids = enc["input_ids"][i]
        offsets = enc["offset_mapping"][i]
        special = enc["special_tokens_mask"][i]
        owner: list[str | None] = []
        for (s, e), sp in zip(offsets, special, strict=True):
            who = None
            if not sp and e > s:
                for f, (fs, fe) in char_spans.items():
                    if s < fe and e > fs:
                        who = f
                        break
            owner.append(who)
        count = {f: owner.count(f) for f in fields}
        keep = {f: count[f] if limits.get(f) is None else min(count[f], limits[f]) for f in fields}
        if max_length is not None:
            excess = len(ids) - sum(count.values()) + sum(keep.values()) - max_length
            for f in shrink:
                if excess <= 0:
                    break
                take = min(excess, keep.get(f, 0))
                keep[f] -= take
                excess -= take
            if excess > 0:
                raise ConfigError(
                    f"scorer option max_length={max_length}: the prompt template alone takes "
                    f"{len(ids) - sum(count.values())} tokens; raise max_length or shorten the template"
                )
        seen = dict.fromkeys(fields, 0)
        kept_ids: list[int] = []
        spans: dict[str, list[int]] = {}
        for tok, who in zip(ids, owner, strict=True):
            if who is not None:
                seen[who] += 1
                if seen[who] > keep[who]:
                    continue
                span = spans.setdefault(who, [len(kept_ids), len(kept_ids)])
                span[1] = len(kept_ids) + 1
            kept_ids.append(tok)
        for f in fields:
            flags[f].append(keep[f] < count[f])
            spans.setdefault(f, [len(kept_ids), len(kept_ids)])
        out_ids.append(kept_ids)
        out_spans.append({f: (s, e) for f, (s, e) in spans.items()})
    if stats is not None:
        for f in fields:
            stats.record(flags[f], names.get(f, f))
    return TemplateEncoding(out_ids, out_spans)


# -- batches ---------------------------------------------------------------------------


def pad(
    encoded: Mapping[str, Sequence[Sequence[int]]],
    idx: Sequence[int],
    pad_id: int,
    side: str = "right",
) -> dict[str, torch.Tensor]:
    """Pad rows ``idx`` of every input to the longest among them; adds ``attention_mask``."""
    rows = [encoded["input_ids"][i] for i in idx]
    width = max((len(r) for r in rows), default=0)
    out: dict[str, torch.Tensor] = {}
    keys = list(encoded)
    if "attention_mask" not in keys:
        keys.append("attention_mask")
    for key in keys:
        value = pad_id if key == "input_ids" else _PAD_VALUES.get(key, 0)
        t = torch.full((len(rows), width), value, dtype=torch.long)
        for j, i in enumerate(idx):
            seq = encoded[key][i] if key in encoded else [1] * len(rows[j])
            if not seq:
                continue
            if side == "left":
                t[j, width - len(seq) :] = torch.as_tensor(seq, dtype=torch.long)
            else:
                t[j, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        out[key] = t
    return out


def padded_batches(
    encoded: Mapping[str, Sequence[Sequence[int]]],
    batch_size: int,
    device: torch.device,
    pad_id: int,
    side: str = "right",
) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    """(indices, model inputs) per batch, longest inputs first."""
    lengths = [len(ids) for ids in encoded["input_ids"]]
    for idx in length_sorted_batches(lengths, batch_size):
        batch = pad(encoded, idx, pad_id, side)
        yield idx, {k: v.to(device) for k, v in batch.items()}


def run_batches(
    tokenizer: Any,
    encoded: Mapping[str, Sequence[Sequence[int]]],
    batch_size: int,
    device: torch.device,
    fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    progress: Any = None,
    padding_side: str = "right",
    extra: Mapping[str, Sequence[Any]] | None = None,
) -> torch.Tensor:
    """Apply ``fn`` to every batch; results come back in input order (fp32, CPU).

    ``extra`` holds per-input values that are not tensors to pad (e.g. token spans);
    each batch gets them under the same keys, as lists in batch order.
    """
    n = len(encoded["input_ids"])
    pad_id = pad_token_id(tokenizer)
    out: torch.Tensor | None = None
    with torch.inference_mode():
        for idx, batch in padded_batches(encoded, batch_size, device, pad_id, padding_side):
            if extra:
                batch = {**batch, **{k: [v[i] for i in idx] for k, v in extra.items()}}
            res = fn(batch).float().cpu()
            if out is None:
                out = torch.empty((n, *res.shape[1:]), dtype=torch.float32)
            out[idx] = res
            if progress is not None:
                progress.update(len(idx))
    return out if out is not None else torch.empty(0)
