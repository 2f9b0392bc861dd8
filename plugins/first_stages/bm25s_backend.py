"""BM25 first stage on bm25s (Lucene-style scoring, sparse matrices, no server).

The index is built over title + text, cached on disk under a key made of the
corpus content hash and every setting, and loaded from there next time.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import bm25s
import Stemmer

from mergekit_ir import FirstStageKind, Param, Run, hookimpl
from mergekit_ir import atomic
from mergekit_ir.errors import ConfigError

log = logging.getLogger(__name__)

# bm25s stop-word lists and Snowball stemmers by language.
LANGUAGES = {
    "english": "en",
    "german": "de",
    "spanish": "es",
    "french": "fr",
    "italian": "it",
    "portuguese": "pt",
    "dutch": "nl",
    "swedish": "sv",
    "danish": "da",
    "finnish": "fi",
    "norwegian": "no",
    "russian": "ru",
}

PARAMS = (
    Param("k1", float, 1.5, "term-frequency saturation", min=0.0, max=10.0),
    Param("b", float, 0.75, "length normalisation", min=0.0, max=1.0),
    Param("method", str, "lucene", "BM25 variant", choices=("lucene", "robertson", "atire", "bm25l", "bm25+")),
    Param("language", str, None, "stemmer and stop words (default: the dataset's language)",
          choices=tuple(LANGUAGES)),
    Param("stemming", bool, True, "Snowball stemming"),
    Param("stopwords", bool, True, "remove the language's stop words"),
)


class BM25sIndex:
    """A bm25s index over one corpus."""

    def __init__(self, corpus: Mapping[str, Any], params: Mapping[str, Any], cache_dir: Path | None):
        self.params = dict(params)
        language = self.params.get("language") or "english"
        self.stemmer = Stemmer.Stemmer(language) if self.params["stemming"] else None
        self.stopwords = LANGUAGES[language] if self.params["stopwords"] else None
        self.doc_ids = sorted(corpus)
        key = self._key(corpus)
        path = cache_dir / f"bm25s-{key}" if cache_dir else None
        if path is not None and (path / "params.index.json").is_file():
            log.info("cache hit: bm25s index %s", path)
            self.retriever = bm25s.BM25.load(str(path))
            self.doc_ids = json.loads((path / "doc_ids.json").read_text())
            return
        texts = [corpus[d].full_text for d in self.doc_ids]
        tokens = bm25s.tokenize(texts, stopwords=self.stopwords, stemmer=self.stemmer, show_progress=False)
        self.retriever = bm25s.BM25(k1=self.params["k1"], b=self.params["b"], method=self.params["method"])
        self.retriever.index(tokens, show_progress=False)
        if path is not None:
            with atomic.directory(path, overwrite=True) as tmp:
                self.retriever.save(str(tmp))
                (tmp / "doc_ids.json").write_text(json.dumps(self.doc_ids))
            log.info("cached bm25s index at %s", path)

    def _key(self, corpus: Mapping[str, Any]) -> str:
        h = hashlib.sha256(json.dumps(self.params, sort_keys=True).encode())
        h.update(f"bm25s={bm25s.__version__}".encode())
        for did in self.doc_ids:
            h.update(f"{did}\0{corpus[did].full_text}\n".encode())
        return h.hexdigest()[:20]

    def search(self, queries: Mapping[str, str], k: int) -> Run:
        qids = sorted(queries)
        k = min(k, len(self.doc_ids))
        tokens = bm25s.tokenize([queries[q] for q in qids], stopwords=self.stopwords,
                                stemmer=self.stemmer, return_ids=False, show_progress=False)
        vocab = self.retriever.vocab_dict
        tokens = [[t for t in toks if t in vocab] for toks in tokens]
        run: Run = {}
        nonempty = [i for i, toks in enumerate(tokens) if toks]
        if nonempty:
            docs, scores = self.retriever.retrieve([tokens[i] for i in nonempty], k=k,
                                                   show_progress=False, n_threads=1)
            for row, i in enumerate(nonempty):
                pairs = [(self.doc_ids[int(d)], float(s))
                         for d, s in zip(docs[row], scores[row], strict=True) if s > 0]
                pairs.sort(key=lambda p: (-p[1], p[0]))
                run[qids[i]] = dict(pairs)
        for q in qids:
            run.setdefault(q, {})
        return run


def build(corpus: Mapping[str, Any], params: Mapping[str, Any], cache_dir: Path | None) -> BM25sIndex:
    if params.get("language") and params["language"] not in LANGUAGES:
        raise ConfigError(f"bm25s.language: {params['language']!r} is not one of {', '.join(LANGUAGES)}")
    return BM25sIndex(corpus, params, cache_dir)


@hookimpl
def register_first_stages(register):
    register(FirstStageKind(
        name="bm25s",
        description="BM25 on bm25s over title + text; stop words + Snowball stemming; index cached on disk",
        build=build,
        params=PARAMS,
    ))
