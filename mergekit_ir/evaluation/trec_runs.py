"""TREC run files (``qid Q0 docid rank score tag``): what BEIR, PyTerrier, ranx and trec_eval
exchange, so runs made elsewhere can be evaluated with our metrics.

Every line :func:`write_trec` writes has exactly six whitespace-separated columns, since
trec_eval, ir_measures and :func:`read_trec` split on whitespace:

- the run tag is made safe: each run of whitespace becomes ``_`` (``first stage`` is written
  ``first_stage``; an empty tag is written ``run``). A tag is a label, so this loses nothing;
- a query or document id that is empty or holds whitespace is refused with a one-line
  :class:`DatasetError` naming it. Ids must survive the round trip unchanged — they are matched
  against the qrels — and no rewriting of them would stay matched in other tools.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from mergekit_ir.errors import DatasetError, short_repr
from mergekit_ir.ranking import Ranking


def read_trec(path: str | Path) -> Ranking:
    """``{qid: {docid: score}}``; a malformed line is a one-line error naming file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such run file") from None
    except UnicodeDecodeError as exc:
        raise DatasetError(
            f"{path}: not UTF-8 text (byte {exc.start}); is it a TREC run?"
        ) from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror})") from None
    run: Ranking = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 6:
            raise DatasetError(
                f"{path}:{lineno}: expected 6 columns 'qid Q0 docid rank score tag', got "
                f"{len(parts)}: {short_repr(line)}"
            )
        qid, _, did, _, score, _ = parts
        try:
            value = float(score)
        except ValueError:
            raise DatasetError(
                f"{path}:{lineno}: score {short_repr(score)} is not a number"
            ) from None
        if math.isnan(value):
            raise DatasetError(f"{path}:{lineno}: score is NaN")
        docs = run.setdefault(qid, {})
        if did in docs:
            raise DatasetError(
                f"{path}:{lineno}: document {short_repr(did)} twice for query {short_repr(qid)}"
            )
        docs[did] = value
    if not run:
        raise DatasetError(f"{path}: no run lines; is it empty?")
    return run


_WHITESPACE = re.compile(r"\s+")


def safe_tag(tag: str) -> str:
    """A run tag as one TREC column: whitespace runs become ``_``; empty becomes ``run``."""
    return _WHITESPACE.sub("_", str(tag)) or "run"


def check_trec_id(value: str, what: str, path: str | Path) -> None:
    """A query/document id a TREC column can hold as it is: not empty, no whitespace (which
    covers line breaks); else a one-line error naming the id."""
    if not value or _WHITESPACE.search(value):
        problem = "is empty" if not value else "contains whitespace"
        raise DatasetError(
            f"{path}: {what} id {short_repr(value)} {problem}; a TREC run line is six "
            "whitespace-separated columns, so it cannot be written — rename it in the dataset "
            "(corpus, queries and qrels alike)"
        )


def write_trec(path: str | Path, run: Ranking, tag: str) -> None:
    """Ranked by score, ties by document id; written atomically. Six columns a line: the tag
    is made safe (:func:`safe_tag`) and ids that would break a column are refused
    (:func:`check_trec_id`), before anything is written."""
    from mergekit_ir.storage import atomic

    tag = safe_tag(tag)
    lines = []
    for qid in sorted(run):
        check_trec_id(qid, "query", path)
        for did in run[qid]:
            check_trec_id(did, "document", path)
        ranked = sorted(run[qid].items(), key=lambda x: (-x[1], x[0]))
        lines += [
            f"{qid} Q0 {did} {rank} {score:.6f} {tag}"
            for rank, (did, score) in enumerate(ranked, 1)
        ]
    atomic.write_text(Path(path), "\n".join(lines) + "\n")
