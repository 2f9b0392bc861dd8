"""TREC run files (``qid Q0 docid rank score tag``): what BEIR, PyTerrier, ranx and trec_eval
exchange, so runs made elsewhere can be evaluated with our metrics."""

from __future__ import annotations

import math
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


def write_trec(path: str | Path, run: Ranking, tag: str) -> None:
    """Ranked by score, ties by document id; written atomically."""
    from mergekit_ir.storage import atomic

    lines = []
    for qid in sorted(run):
        ranked = sorted(run[qid].items(), key=lambda x: (-x[1], x[0]))
        lines += [
            f"{qid} Q0 {did} {rank} {score:.6f} {tag}"
            for rank, (did, score) in enumerate(ranked, 1)
        ]
    atomic.write_text(Path(path), "\n".join(lines) + "\n")
