"""The adaptation corpus: documents from a registry dataset or a local file, tokenised once and
packed into fixed-length blocks, with the packed blocks cached by content.

Packing (documents joined by a separator, cut into ``max_length`` blocks, each wrapped in the
tokenizer's own special tokens) wastes no compute on padding, which is what makes a CPU run
of a few hundred steps affordable.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mergekit_ir.adaptation.naming import setting_name, setting_text
from mergekit_ir.adaptation.progress import Reporter, duration, now
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


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of a UTF-8 text file; a binary or non-UTF-8 file is one line naming
    the file and the line (not a UnicodeDecodeError traceback)."""
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the corpus ({exc.strerror or exc})") from None
    with fh:
        for lineno, raw in enumerate(fh, 1):
            if b"\0" in raw:
                raise DatasetError(
                    f"{path}:{lineno}: a NUL byte: a binary file, not text; give a UTF-8 "
                    ".jsonl (title/text per line) or .txt (one document per line)"
                )
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DatasetError(
                    f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column "
                    f"{exc.start + 1}); convert the file to UTF-8, e.g. iconv -f latin1 -t utf-8"
                ) from None
            yield lineno, text.removeprefix("\ufeff") if lineno == 1 else text


def _read_txt(path: Path) -> list[str]:
    # splitlines per line: the same documents as str.splitlines() of the whole file
    return [t.strip() for _, line in _lines(path) for t in line.splitlines()]


def _read_jsonl(path: Path) -> list[str]:
    texts = []
    for lineno, line in _lines(path):
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


def corpus_path(spec: str) -> Path | None:
    """The local file or folder ``spec`` names (an input the output must stay away from), or
    None for a registry dataset name."""
    path = Path(spec).expanduser()
    return path if path.exists() else None


def load_corpus(spec: str, corpora: NamedCorpora | None = None, where: str | None = None) -> Corpus:
    """``spec`` is a .jsonl/.txt file, a BEIR folder, or a name in ``corpora``; ``where`` is
    the YAML path of a registry ``adapt:`` block (errors then name its ``corpus`` key)."""
    named = setting_text("corpus", spec, where)
    path = Path(spec).expanduser()
    if path.suffix in (".jsonl", ".txt") or path.is_file():
        if not path.is_file():
            raise DatasetError(
                f"{named}: file not found; give a registry dataset name or a .jsonl/.txt file"
            )
        texts = _read_jsonl(path) if path.suffix == ".jsonl" else _read_txt(path)
        corpus = Corpus(str(path), texts, file_digest(path))
    elif path.is_dir() and (path / "corpus.jsonl").is_file():
        corpus = Corpus(
            str(path), _read_jsonl(path / "corpus.jsonl"), file_digest(path / "corpus.jsonl")
        )
    else:
        if corpora is None or corpora.load is None or spec not in corpora.names:
            known = ", ".join(sorted(corpora.names)) if corpora is not None else ""
            raise DatasetError(
                f"{named}: not a file, BEIR folder or registry dataset"
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


def _check_known(tokens: Iterable[int], tokenizer: Any, corpus: Corpus, n_docs: int) -> None:
    """At least one token the tokenizer knows (not unknown, not special): a corpus of texts
    that tokenise to nothing (zero-width characters) or to ``[UNK]`` only trains on padding
    and separators — a silent no-op model — so it is one line instead."""
    unknown = set(tokenizer.all_special_ids)
    if tokenizer.unk_token_id is not None:
        unknown.add(tokenizer.unk_token_id)
    if not any(t not in unknown for t in tokens):
        raise DatasetError(
            f"corpus {corpus.name}: its {n_docs:,} documents tokenise to nothing the base's "
            "tokenizer knows (no tokens, or only unknown/special ones); training on it would "
            "teach nothing — give text in the base's language and vocabulary"
        )


def packed_blocks(
    corpus: Corpus,
    tokenizer: Any,
    tokenizer_folder: Path,
    objective: str,
    max_length: int,
    cache_root: Path | None,
    where: str | None = None,
    reporter: Reporter | None = None,
) -> torch.Tensor:
    """(blocks, max_length) int64 ids of the packed corpus; cached by corpus, tokenizer and layout."""
    reporter = reporter or Reporter(False)
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
            tensor = torch.load(cached, map_location="cpu", weights_only=True).long()
        except Exception:
            cached.unlink(missing_ok=True)
        else:
            _check_known(tensor.unique().tolist(), tokenizer, corpus, len(corpus.texts))
            reporter.say(f"packed corpus from the cache: {len(tensor):,} blocks of {max_length}")
            return tensor
    n_docs = len(corpus.texts)
    reporter.say(f"tokenising {n_docs:,} documents of {corpus.name}…")
    start = now()
    ids: list[list[int]] = []
    for first in range(0, n_docs, 1000):
        chunk = corpus.texts[first : first + 1000]
        ids.extend(tokenizer(chunk, add_special_tokens=False, verbose=False)["input_ids"])
        if reporter.due() and len(ids) < n_docs:
            rate = len(ids) / max(now() - start, 1e-9)
            reporter.say(
                f"tokenised {len(ids):,}/{n_docs:,} documents · {rate:,.0f} documents/s · "
                f"ETA {duration((n_docs - len(ids)) / max(rate, 1e-9))}"
            )
    _check_known((t for doc in ids for t in doc), tokenizer, corpus, n_docs)
    prefix, suffix, separator = layout(tokenizer, objective)
    blocks = pack_blocks(ids, raw_length, prefix, suffix, separator)
    if not blocks:
        n = sum(len(x) + len(separator) for x in ids)
        raise DatasetError(
            f"corpus {corpus.name}: {n} tokens, fewer than one block of "
            f"{setting_text('max_length', max_length, where)}; lower "
            f"{setting_name('max_length', where)} or give a larger corpus"
        )
    tensor = torch.tensor(blocks, dtype=torch.int32)
    if cached is not None:
        buf = io.BytesIO()
        torch.save(tensor, buf)
        atomic.write_bytes(cached, buf.getvalue())
    reporter.say(f"{len(blocks):,} blocks of {max_length} tokens")
    return tensor.long()
