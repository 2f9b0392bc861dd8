"""The adaptation corpus: documents from a registry dataset or a local file, tokenised once and
packed into fixed-length blocks, with the packed blocks cached by content.

Packing (documents joined by a separator, cut into ``max_length`` blocks, each wrapped in the
tokenizer's own special tokens) wastes no compute on padding, which is what makes a CPU run
of a few hundred steps affordable.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mergekit_ir.errors import DatasetError
from mergekit_ir.storage import atomic
from mergekit_ir.storage.cache import cache_key
from mergekit_ir.storage.fingerprint import file_digest, files_fingerprint

_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)


@dataclass(frozen=True)
class Corpus:
    """Document texts (title + body) and a content fingerprint for caches and the model card."""

    name: str
    texts: list[str]
    fingerprint: str


@dataclass(frozen=True)
class NamedCorpora:
    """Corpora known by name besides files (a registry's datasets), as plain values: the names,
    a loader of one's corpus, and the folder relative corpus paths are read from. The
    experiments layer builds it from a registry; adaptation never imports the registry."""

    names: tuple[str, ...] = ()
    load: Callable[[str], Corpus] | None = None
    base_dir: Path | None = None


def _read_jsonl(path: Path) -> list[str]:
    texts = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DatasetError(f"{path}:{lineno}: expected a JSON object with 'title'/'text'")
            body = row.get("text") or row.get("contents") or ""
            title = row.get("title") or ""
            texts.append(f"{title} {body}".strip() if title else str(body))
    return texts


def load_corpus(spec: str, corpora: NamedCorpora | None = None) -> Corpus:
    """``spec`` is a .jsonl/.txt file, a BEIR folder, or a name in ``corpora``."""
    path = Path(spec).expanduser()
    if path.suffix in (".jsonl", ".txt") or path.is_file():
        if not path.is_file():
            raise DatasetError(
                f"--corpus {spec}: file not found; give a registry dataset name or a .jsonl/.txt file"
            )
        if path.suffix == ".jsonl":
            texts = _read_jsonl(path)
        else:
            texts = [t.strip() for t in path.read_text(encoding="utf-8").splitlines()]
        corpus = Corpus(str(path), texts, file_digest(path))
    elif path.is_dir() and (path / "corpus.jsonl").is_file():
        corpus = Corpus(
            str(path), _read_jsonl(path / "corpus.jsonl"), file_digest(path / "corpus.jsonl")
        )
    else:
        if corpora is None or corpora.load is None or spec not in corpora.names:
            known = ", ".join(sorted(corpora.names)) if corpora is not None else ""
            raise DatasetError(
                f"--corpus {spec}: not a file, BEIR folder or registry dataset"
                + (f" (datasets: {known})" if known else "")
            )
        corpus = corpora.load(spec)
    texts = [t for t in corpus.texts if t and t.strip()]
    if not texts:
        raise DatasetError(f"corpus {corpus.name}: no text (every document is empty)")
    return Corpus(corpus.name, texts, corpus.fingerprint)


def special_wrapping(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after one text (e.g. [CLS] … [SEP])."""
    content = tokenizer("document", add_special_tokens=False)["input_ids"]
    full = tokenizer("document", add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(content) + 1):
        if full[i : i + len(content)] == content:
            return full[:i], full[i + len(content) :]
    return [], []


def pack_blocks(
    docs: Sequence[Sequence[int]],
    length: int,
    prefix: Sequence[int] = (),
    suffix: Sequence[int] = (),
    separator: Sequence[int] = (),
) -> list[list[int]]:
    """Join documents (each followed by ``separator``) and cut the stream into blocks of
    exactly ``length`` ids, each ``prefix + chunk + suffix``; the incomplete tail is dropped."""
    body = length - len(prefix) - len(suffix)
    if body < 1:
        raise ValueError(f"block length {length} leaves no room for text")
    stream: list[int] = []
    for ids in docs:
        stream.extend(ids)
        stream.extend(separator)
    return [
        [*prefix, *stream[i : i + body], *suffix] for i in range(0, len(stream) - body + 1, body)
    ]


def layout(tokenizer: Any, objective: str) -> tuple[list[int], list[int], list[int]]:
    """(prefix, suffix, separator) of a block for this objective."""
    prefix, suffix = special_wrapping(tokenizer)
    eos = tokenizer.eos_token_id
    sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else eos
    if objective == "span":  # the eos is appended by span corruption itself
        return [], [], [eos] if eos is not None else []
    if objective == "clm":
        return prefix, [], [eos] if eos is not None else []
    return prefix, suffix, [sep] if sep is not None else []


def tokenizer_fingerprint(folder: Path) -> str:
    files = [(n, folder / n) for n in _TOKENIZER_FILES if (folder / n).is_file()]
    return files_fingerprint(files, salt="tokenizer")


def packed_blocks(
    corpus: Corpus,
    tokenizer: Any,
    tokenizer_folder: Path,
    objective: str,
    max_length: int,
    cache_root: Path | None,
) -> torch.Tensor:
    """(blocks, max_length) int64 ids of the packed corpus; cached by corpus, tokenizer and layout."""
    raw_length = max_length - 1 if objective == "span" else max_length
    key = cache_key(
        "adapt-corpus",
        corpus.fingerprint,
        tokenizer_fingerprint(tokenizer_folder),
        objective,
        raw_length,
    )
    cached = cache_root / "adapt-corpus" / f"{key}.pt" if cache_root is not None else None
    if cached is not None and cached.is_file():
        try:
            return torch.load(cached, map_location="cpu", weights_only=True).long()
        except Exception:
            cached.unlink(missing_ok=True)
    ids: list[list[int]] = []
    for start in range(0, len(corpus.texts), 1000):
        chunk = corpus.texts[start : start + 1000]
        ids.extend(tokenizer(chunk, add_special_tokens=False, verbose=False)["input_ids"])
    prefix, suffix, separator = layout(tokenizer, objective)
    blocks = pack_blocks(ids, raw_length, prefix, suffix, separator)
    if not blocks:
        n = sum(len(x) + len(separator) for x in ids)
        raise DatasetError(
            f"corpus {corpus.name}: {n} tokens, fewer than one block of --max-length {max_length}; "
            "lower --max-length or give a larger corpus"
        )
    tensor = torch.tensor(blocks, dtype=torch.int32)
    if cached is not None:
        buf = io.BytesIO()
        torch.save(tensor, buf)
        atomic.write_bytes(cached, buf.getvalue())
    return tensor.long()
