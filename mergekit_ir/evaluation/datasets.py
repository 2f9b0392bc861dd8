"""Test collections behind one interface: corpus, queries, qrels.

Two sources: a local BEIR folder (``corpus.jsonl``, ``queries.jsonl``,
``qrels/<split>.tsv``) and an ``ir_datasets`` id. Ids are strings everywhere;
a query's ``metadata`` is never read (SciFact's names the gold documents).

A split may be sliced in query order: ``train[:20%]`` or ``train[:161]`` keeps the
first queries of the split as they appear in its qrels file (the order BEIR's
loader yields them in).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mergekit_ir.errors import DatasetError, short_repr

log = logging.getLogger(__name__)

_SLICE = re.compile(r"^(?P<split>[^\[\]]*)(?:\[:(?P<n>\d+)(?P<pct>%?)\])?$")


@dataclass(frozen=True)
class Document:
    title: str
    text: str

    @property
    def full_text(self) -> str:
        """Title and body, as BEIR re-rankers see a document."""
        return f"{self.title} {self.text}".strip() if self.title else self.text


@dataclass
class Dataset:
    """One split of a collection: what a run needs."""

    name: str
    corpus: dict[str, Document]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    language: str = "english"
    source: str = ""
    _fingerprint: str | None = field(default=None, repr=False)

    def fingerprint(self) -> str:
        """A content hash, so caches follow the data, not its path."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            for did in sorted(self.corpus):
                d = self.corpus[did]
                h.update(f"{did}\0{d.title}\0{d.text}\n".encode())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def queries_fingerprint(self) -> str:
        h = hashlib.sha256()
        for qid in sorted(self.queries):
            h.update(f"{qid}\0{self.queries[qid]}\n".encode())
        return h.hexdigest()[:16]


def parse_split(spec: str) -> tuple[str, int | None, bool]:
    """``train[:20%]`` -> ("train", 20, True); ``test`` -> ("test", None, False)."""
    m = _SLICE.match(spec.strip())
    if not m:
        raise DatasetError(
            f"split {spec!r}: write a split name, optionally sliced like train[:20%] or train[:161]"
        )
    n = m.group("n")
    return m.group("split"), (int(n) if n is not None else None), bool(m.group("pct"))


def slice_queries(qids: list[str], n: int | None, pct: bool) -> list[str]:
    if n is None:
        return qids
    count = math.floor(len(qids) * n / 100) if pct else n
    return qids[:count]


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of a UTF-8 file; a bad byte is an error naming the file and line."""
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DatasetError(
                    f"{path}:{lineno}: byte 0x{raw[exc.start]:02x} at column {exc.start + 1} is "
                    "not UTF-8; re-encode the file as UTF-8"
                ) from None


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    if not path.is_file():
        raise DatasetError(
            f"{path}: file not found; a BEIR folder holds corpus.jsonl, queries.jsonl and qrels/<split>.tsv"
        )
    first_line: dict[str, int] = {}
    for lineno, line in _lines(path):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(
                f"{path}:{lineno}: not valid JSON ({exc.msg}); fix or re-download the file"
            ) from None
        if not isinstance(rec, dict) or "_id" not in rec:
            raise DatasetError(f"{path}:{lineno}: record has no '_id' field")
        if (
            not isinstance(rec["_id"], str | int)
            or isinstance(rec["_id"], bool)
            or not str(rec["_id"]).strip()
        ):
            raise DatasetError(
                f"{path}:{lineno}: '_id' is {short_repr(rec['_id'])}; give a non-empty string"
            )
        rid = str(rec["_id"])
        if rid in first_line:  # last-wins would silently change the collection
            raise DatasetError(
                f"{path}:{lineno}: duplicate _id {short_repr(rid)} (first on line "
                f"{first_line[rid]}); remove or rename one of them"
            )
        first_line[rid] = lineno
        yield lineno, rec


QRELS_HEADER_WORDS = ("score", "relevance", "rel", "label", "judgment", "grade")


def parse_grade(text: str, where: str) -> int:
    """A relevance grade as written: an integer (``1``, ``2``, ``1.0``); anything else is an error.

    Grades are integers in BEIR and TREC, and ranx takes integer qrels; a fractional
    score such as ``0.7`` used to become 0 (every metric 0.000) — it is refused instead.
    """
    try:
        value = float(text)
    except ValueError:
        raise DatasetError(
            f"{where}: score {short_repr(text)} is not a number; write an integer grade (0 = not relevant)"
        ) from None
    if not math.isfinite(value) or value != int(value):
        raise DatasetError(
            f"{where}: score {short_repr(text)} is not an integer grade; qrels grades are "
            "integers (0 = not relevant, 1, 2, … more relevant), so scale or round it yourself"
        )
    return int(value)


def _is_header(row: list[str]) -> bool:
    """Line 1 is a header only when its score column is a word such as ``score``."""
    return row[-1].strip().lower() in QRELS_HEADER_WORDS


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """BEIR/TREC qrels; tolerates a header, CRLF line ends and the 4-column TREC form."""
    if not path.is_file():
        splits = sorted(p.stem for p in path.parent.glob("*.tsv")) if path.parent.is_dir() else []
        hint = f" (available splits: {', '.join(splits)})" if splits else ""
        raise DatasetError(f"{path}: qrels file not found{hint}")
    lines = list(_lines(path))
    first = next((text for _, text in lines if text.strip()), "")
    delim = "\t" if "\t" in first else " "
    qrels: dict[str, dict[str, int]] = {}
    for lineno, text in lines:
        row = next(csv.reader([text.rstrip("\r\n")], delimiter=delim), [])
        row = [c.strip() for c in row if c.strip() != ""]
        if not row:
            continue
        if len(row) == 4:  # TREC: qid iter docid rel
            row = [row[0], row[2], row[3]]
        if len(row) != 3:
            raise DatasetError(
                f"{path}:{lineno}: expected 'query-id corpus-id score', got {len(row)} columns"
            )
        if lineno == 1 and _is_header(row):
            continue
        qrels.setdefault(row[0], {})[row[1]] = parse_grade(row[2], f"{path}:{lineno}")
    if not qrels:
        raise DatasetError(
            f"{path}: no judgments (the file is empty or only a header); "
            "a qrels line is 'query-id<TAB>corpus-id<TAB>score'"
        )
    return qrels


def check_corpus(corpus: dict[str, Document], path: Path) -> None:
    """A corpus with no (non-empty) document cannot rank anything: say so before BM25 does."""
    if not corpus:
        raise DatasetError(f"{path}: the corpus has no documents; check the file")
    if not any(d.full_text.strip() for d in corpus.values()):
        raise DatasetError(
            f"{path}: all {len(corpus)} documents have empty title and text; check the file"
        )


def warn_unjudgeable(
    qrels: dict[str, dict[str, int]], corpus: dict[str, Document], path: Path
) -> None:
    """Judged documents missing from the corpus can never be retrieved: count them."""
    missing = {d for docs in qrels.values() for d in docs if d not in corpus}
    if missing:
        example = sorted(missing)[0]
        log.warning(
            "%s: %d judged document(s) are not in the corpus (e.g. %r); they count as "
            "relevant documents never retrieved",
            path,
            len(missing),
            example,
        )


def load_beir_folder(
    folder: str | Path, split: str = "test", name: str | None = None, language: str = "english"
) -> Dataset:
    """A split of a local BEIR folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: BEIR folder not found")
    split_name, n, pct = parse_split(split)
    qrels = read_qrels(folder / "qrels" / f"{split_name}.tsv")
    corpus: dict[str, Document] = {}
    for _, rec in _read_jsonl(folder / "corpus.jsonl"):
        corpus[str(rec["_id"])] = Document(str(rec.get("title") or ""), str(rec.get("text") or ""))
    check_corpus(corpus, folder / "corpus.jsonl")
    all_queries: dict[str, str] = {}
    for _, rec in _read_jsonl(folder / "queries.jsonl"):
        all_queries[str(rec["_id"])] = str(rec.get("text") or "")  # metadata is never read
    missing = [q for q in qrels if q not in all_queries]
    if missing:
        raise DatasetError(
            f"{folder / 'queries.jsonl'}: query id {missing[0]!r} from qrels/{split_name}.tsv is missing"
        )
    keep = slice_queries(list(qrels), n, pct)
    warn_unjudgeable({q: qrels[q] for q in keep}, corpus, folder / "qrels" / f"{split_name}.tsv")
    return Dataset(
        name=name or folder.name,
        corpus=corpus,
        queries={q: all_queries[q] for q in keep},
        qrels={q: qrels[q] for q in keep},
        language=language,
        source=f"{folder}@{split}",
    )


def download_failure(dataset_id: str, exc: BaseException) -> str:
    """One line for a failed ``ir_datasets`` download: what failed and the two ways out."""
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    m = re.search(r"host='([^']+)'", reason)
    if m:
        reason = f"cannot reach {m.group(1)}"
    elif len(reason) > 160:
        reason = reason[:157] + "..."
    home = os.environ.get("IR_DATASETS_HOME", "~/.ir_datasets")
    return (
        f"ir_datasets could not download {dataset_id!r} ({type(exc).__name__}: {reason}); "
        f"run once with network access (files are kept in {home}) "
        "or point the dataset at a local BEIR folder with `beir:`"
    )


def load_ir_datasets(
    dataset_id: str, name: str | None = None, language: str = "english"
) -> Dataset:
    """An ``ir_datasets`` id, optionally sliced: ``beir/scifact/train[:20%]``."""
    import ir_datasets

    m = re.match(r"^(?P<id>[^\[]+?)(?P<slice>\[:\d+%?\])?$", dataset_id)
    base_id = m.group("id") if m else dataset_id
    _, n, pct = parse_split("x" + (m.group("slice") or "")) if m else (None, None, False)
    try:
        ds = ir_datasets.load(base_id)
    except KeyError:
        raise DatasetError(
            f"ir_datasets id {base_id!r} is unknown; see https://ir-datasets.com for ids (e.g. beir/scifact/test)"
        ) from None
    if not (ds.has_docs() and ds.has_queries() and ds.has_qrels()):
        raise DatasetError(
            f"ir_datasets id {base_id!r} lacks docs, queries or qrels; pick a split id such as {base_id}/test"
        )
    qrels: dict[str, dict[str, int]] = {}
    try:  # the first iteration downloads; a failure is one line, not ir_datasets' traceback
        for qr in ds.qrels_iter():
            qrels.setdefault(str(qr.query_id), {})[str(qr.doc_id)] = int(qr.relevance)
        queries = {str(q.query_id): q.text for q in ds.queries_iter()}
        corpus = {
            str(d.doc_id): Document(getattr(d, "title", "") or "", getattr(d, "text", "") or "")
            for d in ds.docs_iter()
        }
    except OSError as exc:  # requests' ConnectionError/HTTPError are OSErrors too
        raise DatasetError(download_failure(base_id, exc)) from None
    keep = slice_queries([q for q in qrels if q in queries], n, pct)
    return Dataset(
        name=name or base_id,
        corpus=corpus,
        queries={q: queries[q] for q in keep},
        qrels={q: qrels[q] for q in keep},
        language=language,
        source=f"ir_datasets:{dataset_id}",
    )
