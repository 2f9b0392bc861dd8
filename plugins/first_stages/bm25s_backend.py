"""BM25 first stage on bm25s (Lucene-style scoring, sparse matrices, no server).

Two profiles:

- ``bm25s`` (default): one index over title + text, bm25s's tokenizer, the
  language's stop words and Snowball stemmer, k1=1.5, b=0.75.
- ``elasticsearch``: what beir's ``BM25Search`` runs in Elasticsearch (the setup of
  Braga et al., SIGIR'25), reproduced on bm25s matrices: one index per field (title,
  text), the ``english`` analyzer, Lucene's BM25 (k1=1.2, b=0.75, lossy document
  lengths, float32) and ``multi_match`` ``best_fields`` with ``tie_breaker`` 0.5,
  i.e. score = best field score + 0.5 x the other field's score.

Each index is cached on disk under a key made of the corpus content hash and every
setting, and loaded from there next time.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mergekit_ir import ConfigError, DatasetError, FirstStageKind, Param, Ranking, atomic, hookimpl

from . import lucene

if TYPE_CHECKING:
    import bm25s

log = logging.getLogger(__name__)


@functools.cache
def _bm25s() -> Any:
    """bm25s, imported on first use: loading the plugin catalog (every `mergeir` command,
    `mergeir merge` included) does not pay its ~0.4 s. Its import sets its logger to DEBUG,
    and it logs every index build there, so the level is set back after it — once: the
    analyser calls this per text, and ``setLevel`` clears every logger's cache."""
    import bm25s

    logging.getLogger("bm25s").setLevel(logging.WARNING)
    return bm25s


# Language -> (ISO 639-1 code, Snowball algorithm in PyStemmer, bm25s stop-word list).
LANGUAGES: dict[str, tuple[str, str | None, str | None]] = {
    "english": ("en", "english", "en"),
    "german": ("de", "german", "de"),
    "spanish": ("es", "spanish", "es"),
    "french": ("fr", "french", "fr"),
    "italian": ("it", "italian", "it"),
    "portuguese": ("pt", "portuguese", "pt"),
    "dutch": ("nl", "dutch", "nl"),
    "swedish": ("sv", "swedish", "sv"),
    "danish": ("da", "danish", "da"),
    "finnish": ("fi", "finnish", None),
    "norwegian": ("no", "norwegian", "no"),
    "russian": ("ru", "russian", "ru"),
    "turkish": ("tr", "turkish", "tr"),
    "arabic": ("ar", "arabic", None),
    "greek": ("el", "greek", None),
    "hindi": ("hi", "hindi", None),
    "chinese": ("zh", None, "zh"),
    "thai": ("th", None, None),
    "vietnamese": ("vi", None, None),
}
_BY_CODE = {code: name for name, (code, _, _) in LANGUAGES.items()}

PROFILES = ("bm25s", "elasticsearch")
# Settings that differ between profiles when the config leaves them unset.
PROFILE_DEFAULTS = {
    "bm25s": {"k1": 1.5, "b": 0.75},
    "elasticsearch": {"k1": 1.2, "b": 0.75},  # Elasticsearch's BM25 defaults
}
FIELDS = ("title", "text")  # the elasticsearch profile's per-field indexes
TIE_BREAKER = 0.5  # beir's multi_match best_fields tie_breaker
# Bump when tokenisation or scoring changes, so old cached indexes are not reused.
INDEX_FORMAT = 2

PARAMS = (
    Param(
        "profile",
        str,
        "bm25s",
        "bm25s: one title+text index, Snowball; elasticsearch: as beir's BM25Search ran "
        "Elasticsearch (per-field indexes, english analyzer, best_fields, tie_breaker 0.5)",
        choices=PROFILES,
    ),
    Param(
        "k1",
        float,
        None,
        "term-frequency saturation (default: 1.5 bm25s, 1.2 elasticsearch)",
        min=0.0,
        max=10.0,
    ),
    Param("b", float, 0.75, "length normalisation", min=0.0, max=1.0),
    Param(
        "method",
        str,
        "lucene",
        "BM25 variant (the elasticsearch profile is always lucene)",
        choices=("lucene", "robertson", "atire", "bm25l", "bm25+"),
    ),
    Param(
        "language",
        str,
        None,
        "stemmer and stop words (default: the dataset's language)",
        choices=tuple(LANGUAGES) + tuple(_BY_CODE),
    ),
    Param("stemming", bool, True, "stemming (Snowball; Porter for elasticsearch + english)"),
    Param("stopwords", bool, True, "remove the language's stop words"),
)


def resolve_language(language: str | None) -> str:
    """A language name or ISO code -> the name used here; None -> english."""
    if not language:
        return "english"
    key = str(language).strip().lower()
    if key in LANGUAGES:
        return key
    if key in _BY_CODE:
        return _BY_CODE[key]
    raise ConfigError(
        f"bm25s.language: {language!r} is not supported; use one of {', '.join(LANGUAGES)} "
        "(or their ISO 639-1 codes)"
    )


def resolve_settings(params: Mapping[str, Any]) -> dict[str, Any]:
    """Every setting that shapes the index, with profile defaults filled in."""
    profile = params.get("profile") or "bm25s"
    if profile not in PROFILES:
        raise ConfigError(f"bm25s.profile: {profile!r} is not one of {', '.join(PROFILES)}")
    method = params.get("method") or "lucene"
    if profile == "elasticsearch" and method != "lucene":
        raise ConfigError(
            f"bm25s.method: the elasticsearch profile scores with Lucene's BM25; "
            f"drop method={method!r} or use profile=bm25s"
        )
    defaults = PROFILE_DEFAULTS[profile]
    return {
        "profile": profile,
        "k1": float(defaults["k1"] if params.get("k1") is None else params["k1"]),
        "b": float(defaults["b"] if params.get("b") is None else params["b"]),
        "method": method,
        "language": resolve_language(params.get("language")),
        "stemming": bool(params.get("stemming", True)),
        "stopwords": bool(params.get("stopwords", True)),
    }


def corpus_key(corpus: Mapping[str, Any], settings: Mapping[str, Any], doc_ids: list[str]) -> str:
    """Content hash of the corpus (title and text apart) and every setting."""
    bm25s = _bm25s()
    h = hashlib.sha256(json.dumps(dict(settings), sort_keys=True).encode())
    h.update(
        f"bm25s={bm25s.__version__};format={INDEX_FORMAT};uax29={lucene.HAS_WORD_BOUNDARIES}".encode()
    )
    for did in doc_ids:
        d = corpus[did]
        h.update(f"{did}\0{d.title}\0{d.text}\n".encode())
    return h.hexdigest()[:20]


class BM25sIndex:
    """A bm25s index over one corpus (one retriever, or one per field)."""

    def __init__(
        self, corpus: Mapping[str, Any], params: Mapping[str, Any], cache_dir: Path | None
    ):
        self.settings = resolve_settings(params)
        self.params = dict(params)
        self.profile = self.settings["profile"]
        self._setup_analysis()
        self.doc_ids = sorted(corpus)
        self.key = corpus_key(corpus, self.settings, self.doc_ids)
        self.path = Path(cache_dir) / f"bm25s-{self.key}" if cache_dir else None
        if self.path is not None and (self.path / "doc_ids.json").is_file():
            log.info("cache hit: bm25s index %s", self.path)
            self._load(self.path)
            return
        self._build(corpus)
        if self.path is not None:
            with atomic.directory(self.path, content_addressed=True) as tmp:
                self._save(tmp)
            log.info("cached bm25s index at %s", self.path)

    # -- analysis -----------------------------------------------------------------------

    def _setup_analysis(self) -> None:
        import Stemmer

        s = self.settings
        _, snowball, stop_key = LANGUAGES[s["language"]]
        self.stopwords = stop_key if s["stopwords"] and stop_key else None
        if self.profile == "bm25s":
            self.stemmer = Stemmer.Stemmer(snowball) if s["stemming"] and snowball else None
            self.analyzer = None
            return
        self.stemmer = None
        if s["language"] == "english":
            self.analyzer = lucene.english_analyzer(
                stopwords=s["stopwords"], stemming=s["stemming"]
            )
        else:  # the same tokenizer, with the language's Snowball stemmer and bm25s stop words
            stem = Stemmer.Stemmer(snowball).stemWord if s["stemming"] and snowball else None
            stops = _stop_list(self.stopwords) if self.stopwords else None
            self.analyzer = lucene.Analyzer(stops, stem, possessive=False)

    def analyze(self, text: str) -> list[str]:
        """The terms one text is indexed (and queried) as."""
        bm25s = _bm25s()
        if self.analyzer is not None:
            return self.analyzer(text)
        return bm25s.tokenize(
            [text],
            stopwords=self.stopwords,
            stemmer=self.stemmer,
            return_ids=False,
            show_progress=False,
        )[0]

    # -- building, saving, loading ------------------------------------------------------

    def _build(self, corpus: Mapping[str, Any]) -> None:
        bm25s = _bm25s()
        s = self.settings
        if self.profile == "bm25s":
            texts = [corpus[d].full_text for d in self.doc_ids]
            tokens = bm25s.tokenize(
                texts, stopwords=self.stopwords, stemmer=self.stemmer, show_progress=False
            )
            if not any(len(doc) for doc in tokens.ids):
                raise _no_terms(len(texts))
            self.retriever = bm25s.BM25(k1=s["k1"], b=s["b"], method=s["method"])
            self.retriever.index(tokens, show_progress=False)
            self.fields = {}
            return
        self.retriever = None
        analysed = {
            field: [self.analyzer(getattr(corpus[d], field) or "") for d in self.doc_ids]
            for field in FIELDS
        }
        if not any(terms for docs in analysed.values() for terms in docs):
            raise _no_terms(len(self.doc_ids))
        self.fields = {
            field: lucene_field_index(docs, k1=s["k1"], b=s["b"])
            for field, docs in analysed.items()
        }

    def _save(self, folder: Path) -> None:
        if self.retriever is not None:
            self.retriever.save(str(folder))
        for field, retriever in self.fields.items():
            retriever.save(str(folder / field))
        (folder / "settings.json").write_text(json.dumps(self.settings, sort_keys=True))
        (folder / "doc_ids.json").write_text(json.dumps(self.doc_ids))  # written last

    def _load(self, folder: Path) -> None:
        bm25s = _bm25s()
        self.doc_ids = json.loads((folder / "doc_ids.json").read_text())
        if self.profile == "bm25s":
            self.retriever = bm25s.BM25.load(str(folder))
            self.fields = {}
        else:
            self.retriever = None
            self.fields = {f: _load_field(folder / f) for f in FIELDS}

    # -- search -------------------------------------------------------------------------

    def search(self, queries: Mapping[str, str], k: int) -> Ranking:
        bm25s = _bm25s()
        if self.profile == "elasticsearch":
            return self._search_fields(queries, k)
        qids = sorted(queries)
        k = min(k, len(self.doc_ids))
        tokens = bm25s.tokenize(
            [queries[q] for q in qids],
            stopwords=self.stopwords,
            stemmer=self.stemmer,
            return_ids=False,
            show_progress=False,
        )
        vocab = self.retriever.vocab_dict
        tokens = [[t for t in toks if t in vocab] for toks in tokens]
        run: Ranking = {}
        nonempty = [i for i, toks in enumerate(tokens) if toks]
        if nonempty and k > 0:
            docs, scores = self.retriever.retrieve(
                [tokens[i] for i in nonempty], k=k, show_progress=False, n_threads=1
            )
            for row, i in enumerate(nonempty):
                pairs = [
                    (self.doc_ids[int(d)], float(s))
                    for d, s in zip(docs[row], scores[row], strict=True)
                    if s > 0
                ]
                pairs.sort(key=lambda p: (-p[1], p[0]))
                run[qids[i]] = dict(pairs)
        for q in qids:
            run.setdefault(q, {})
        return run

    def field_scores(self, query: str) -> dict[str, np.ndarray]:
        """Per-field Lucene BM25 scores (float32) of every document for one query.

        Each field's query is a bool ``should`` over the analysed terms: the term
        scores add up (a repeated term counts again), summed in double and rounded
        to float as Lucene does.
        """
        terms = self.analyze(query)
        out = {}
        for field, retriever in self.fields.items():
            ids = [retriever.vocab_dict[t] for t in terms if t in retriever.vocab_dict]
            if ids:
                out[field] = retriever.get_scores_from_ids(ids).astype(np.float32)
            else:
                out[field] = np.zeros(len(self.doc_ids), dtype=np.float32)
        return out

    def scores(self, query: str) -> np.ndarray:
        """The ``best_fields`` score of every document: max + tie_breaker x the others."""
        return best_fields(list(self.field_scores(query).values()), TIE_BREAKER)

    def _search_fields(self, queries: Mapping[str, str], k: int) -> Ranking:
        run: Ranking = {}
        ids = np.array(self.doc_ids)
        for qid in sorted(queries):
            scores = self.scores(queries[qid])
            hits = np.flatnonzero(scores > 0)
            # best first; ties by document id (self.doc_ids is sorted)
            order = hits[np.lexsort((hits, -scores[hits]))][:k]
            run[qid] = {str(ids[i]): float(scores[i]) for i in order}
        return run


def best_fields(field_scores: list[np.ndarray], tie_breaker: float) -> np.ndarray:
    """Lucene's DisjunctionMaxQuery: ``max + tie_breaker * (sum - max)``, as float32."""
    stack = np.stack(field_scores).astype(np.float32)
    best = stack.max(axis=0)
    others = stack.astype(np.float64).sum(axis=0) - best.astype(np.float64)
    return (best.astype(np.float64) + others * tie_breaker).astype(np.float32)


def lucene_field_index(docs: list[list[str]], k1: float, b: float) -> bm25s.BM25:
    """A bm25s retriever whose score matrix holds Lucene's BM25 for one field.

    ``docs`` are the analysed terms of each document's field (empty for a document
    without it). bm25s keeps the (document x term) score matrix and sums columns at
    query time; the entries are computed here the way Lucene does (see
    :func:`lucene.lucene_bm25_weights`), which bm25s's own indexer does not.
    """
    bm25s = _bm25s()
    vocab: dict[str, int] = {t: i for i, t in enumerate(sorted({t for d in docs for t in d}))}
    doc_idx, term_idx, tf = [], [], []
    for i, terms in enumerate(docs):
        for term, count in Counter(terms).items():
            doc_idx.append(i)
            term_idx.append(vocab[term])
            tf.append(count)
    doc_idx_a = np.array(doc_idx, dtype=np.int64)
    term_idx_a = np.array(term_idx, dtype=np.int64)
    tf_a = np.array(tf, dtype=np.int64)
    lengths = np.array([len(d) for d in docs], dtype=np.int64)
    df = np.bincount(term_idx_a, minlength=len(vocab))
    doc_count = max(int((lengths > 0).sum()), 1)  # documents that have the field
    weights = lucene.lucene_bm25_weights(
        tf_a, lengths[doc_idx_a], df[term_idx_a], doc_count, int(lengths.sum()), k1, b
    )
    order = np.lexsort((doc_idx_a, term_idx_a))  # column-major (term, then document)
    indptr = np.zeros(len(vocab) + 1, dtype=np.int64)
    np.cumsum(df, out=indptr[1:])
    retriever = bm25s.BM25(k1=k1, b=b, method="lucene", dtype="float64")
    retriever.scores = {
        "data": weights[order].astype(np.float32),
        "indices": doc_idx_a[order].astype(np.int32),
        "indptr": indptr,
        "num_docs": len(docs),
    }
    retriever.vocab_dict = vocab
    retriever.unique_token_ids_set = set(vocab.values())
    retriever.nonoccurrence_array = None
    return retriever


def _load_field(folder: Path) -> bm25s.BM25:
    # saved with dtype float64: bm25s adds the float32 term scores in double, like Lucene
    bm25s = _bm25s()
    return bm25s.BM25.load(str(folder))


_STOP_LISTS = {
    "en": "EN",
    "de": "GERMAN",
    "nl": "DUTCH",
    "fr": "FRENCH",
    "es": "SPANISH",
    "pt": "PORTUGUESE",
    "it": "ITALIAN",
    "ru": "RUSSIAN",
    "sv": "SWEDISH",
    "no": "NORWEGIAN",
    "zh": "CHINESE",
    "tr": "TURKISH",
    "da": "DANISH",
}


def _stop_list(code: str) -> tuple[str, ...]:
    """bm25s's stop-word list for a language code (what bm25s.tokenize uses)."""
    _bm25s()
    import bm25s.stopwords

    return getattr(bm25s.stopwords, f"STOPWORDS_{_STOP_LISTS[code]}")


def _no_terms(n: int) -> DatasetError:
    return DatasetError(
        f"corpus: none of its {n} documents has a term left after analysis (empty, or only "
        "stop words); BM25 cannot rank it — check the corpus, or set stopwords: false"
    )


def build(
    corpus: Mapping[str, Any],
    params: Mapping[str, Any],
    cache_dir: Path | None,
    language: str = "english",
) -> BM25sIndex:
    """The index; ``language: null`` in the experiment means the dataset's own language."""
    return BM25sIndex(corpus, {**params, "language": params.get("language") or language}, cache_dir)


@hookimpl
def register_first_stages(register):
    register(
        FirstStageKind(
            name="bm25s",
            description="BM25 on bm25s; profile bm25s (title+text, Snowball) or elasticsearch "
            "(per-field english analyzer + best_fields, as the paper ran it); index cached on disk",
            build=build,
            params=PARAMS,
            row="bm25",
            label="BM25",
        )
    )
