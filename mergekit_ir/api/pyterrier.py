"""PyTerrier transformers over our first stage and scorers (the optional ``pyterrier`` extra).

- :class:`MergeIRBM25`: the ``bm25s`` first-stage backend as a retriever — a query frame
  (``qid``, ``query``) in, the standard result frame out (``qid``, ``query``, ``docno``,
  ``text``, ``score``, ``rank``), ``text`` being what our re-rankers read (title and body);
- :class:`MergeIRReranker`: any scorer kind (``mergeir plugins``) on a model folder, a hub id,
  a ``quickstart:`` item or a registry triplet merged at a given α — a result frame with
  ``query`` and ``text`` in, ``score`` and ``rank`` replaced;
- :func:`load_beir`: a BEIR folder as PyTerrier ``topics`` and ``qrels`` frames.

``MergeIRBM25(folder, k=k) >> MergeIRReranker(model, scorer)`` scores exactly what
``mergeir rerank MODEL --scorer KIND --first-stage bm25s --k K`` scores (its ``model`` row):
the same index, the same top-k, the same document text, the same scorer code. No Java is
started: PyTerrier 1.x keeps Terrier (and pyjnius) optional and nothing here touches it.
See ``docs/pyterrier.md``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import pandas as pd
    import pyterrier as pt
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        f"mergekit_ir.api.pyterrier needs PyTerrier ({exc}); "
        "install it with: pip install 'mergekit-ir[pyterrier]'"
    ) from None

from mergekit_ir.errors import ConfigError, DatasetError, short_repr
from mergekit_ir.evaluation.datasets import (
    Dataset,
    Document,
    _read_jsonl,
    check_corpus,
    load_beir_folder,
)
from mergekit_ir.experiments.registry import Registry, default_registry_path, load_registry
from mergekit_ir.params import check_params
from mergekit_ir.plugin_host import catalog
from mergekit_ir.references import quickstart
from mergekit_ir.references.checkpoints import resolve_checkpoint
from mergekit_ir.scoring.scorer import Scorer, ScoringSettings
from mergekit_ir.storage.cache import cache_key, resolve_cache_root

__all__ = ["BeirFrames", "MergeIRBM25", "MergeIRReranker", "load_beir"]

#: What ``batch_size=None`` means: the experiments' default (``scoring.batch_size``).
DEFAULT_BATCH_SIZE = 32


# -- data ---------------------------------------------------------------------------------------


@dataclass
class BeirFrames:
    """One split of a BEIR folder: PyTerrier ``topics`` (qid, query) and ``qrels``
    (qid, docno, label), and the :class:`Dataset` they came from (its ``corpus`` can feed
    :class:`MergeIRBM25`). Unpacks as ``topics, qrels, dataset``."""

    topics: pd.DataFrame
    qrels: pd.DataFrame
    dataset: Dataset

    def __iter__(self):
        return iter((self.topics, self.qrels, self.dataset))


def _folder(ref: str | Path, cache_dir: str | Path | None) -> Path:
    """A BEIR folder, or a ``quickstart:`` item built in the cache."""
    built = quickstart.resolve(str(ref), resolve_cache_root(cache_dir))
    return built if built is not None else Path(ref)


def load_beir(
    folder: str | Path,
    split: str = "test",
    *,
    name: str | None = None,
    language: str = "english",
    cache_dir: str | Path | None = None,
) -> BeirFrames:
    """A split of a BEIR folder (or ``quickstart:toy``) as PyTerrier frames, read by
    :func:`mergekit_ir.evaluation.datasets.load_beir_folder`: the queries are the split's
    judged ones, as ``mergeir run`` and ``mergeir rerank`` evaluate. ``split`` may be sliced
    (``train[:20%]``, ``test[:50]``)."""
    ds = load_beir_folder(_folder(folder, cache_dir), split, name=name, language=language)
    topics = pd.DataFrame(
        {"qid": list(ds.queries), "query": list(ds.queries.values())}, columns=["qid", "query"]
    )
    rows = [(q, d, g) for q, docs in ds.qrels.items() for d, g in docs.items()]
    qrels = pd.DataFrame(rows, columns=["qid", "docno", "label"]).astype({"label": "int64"})
    return BeirFrames(topics, qrels, ds)


def _beir_corpus(folder: Path) -> dict[str, Document]:
    """``corpus.jsonl`` of a BEIR folder, read as :func:`load_beir_folder` reads it (no qrels
    needed)."""
    if not folder.is_dir():
        raise DatasetError(f"{folder}: BEIR folder not found")
    corpus = {
        str(rec["_id"]): Document(str(rec.get("title") or ""), str(rec.get("text") or ""))
        for _, rec in _read_jsonl(folder / "corpus.jsonl")
    }
    check_corpus(corpus, folder / "corpus.jsonl")
    return corpus


def _as_document(did: str, value: Any) -> Document:
    if isinstance(value, Document):
        return value
    if isinstance(value, str):
        return Document("", value)
    if isinstance(value, Mapping):
        return Document(str(value.get("title") or ""), str(value.get("text") or ""))
    raise DatasetError(
        f"corpus: document {short_repr(did)} is a {type(value).__name__}; give a Document, "
        "a text or a {'title': ..., 'text': ...} mapping"
    )


def _corpus(source: Any, cache_dir: str | Path | None) -> tuple[dict[str, Document], str | None]:
    """``(corpus, language or None)`` from any of the forms :class:`MergeIRBM25` takes."""
    if isinstance(source, BeirFrames):
        source = source.dataset
    if isinstance(source, Dataset):
        return source.corpus, source.language
    if isinstance(source, str | Path):
        return _beir_corpus(_folder(source, cache_dir)), None
    if isinstance(source, pd.DataFrame):
        missing = {"docno", "text"} - set(source.columns)
        if missing:
            raise DatasetError(
                f"corpus frame: column(s) {', '.join(sorted(missing))} missing "
                "(it needs docno and text; title is optional)"
            )
        titles = source["title"] if "title" in source.columns else [""] * len(source)
        corpus = {
            str(d): Document(str(t or ""), str(x or ""))
            for d, t, x in zip(source["docno"], titles, source["text"], strict=True)
        }
    elif isinstance(source, Mapping):
        corpus = {str(d): _as_document(str(d), v) for d, v in source.items()}
    else:
        raise DatasetError(
            f"corpus: {type(source).__name__} is not a corpus; give a BEIR folder, a Dataset, "
            "a {docno: text} mapping or a frame with docno and text"
        )
    check_corpus(corpus, Path("corpus"))
    return corpus, None


# -- first stage --------------------------------------------------------------------------------


class MergeIRBM25(pt.Transformer):
    """The ``bm25s`` first stage as a PyTerrier retriever.

    ``corpus_or_beir_folder``: a BEIR folder (its ``corpus.jsonl``), ``quickstart:toy``, a
    :class:`Dataset` or :class:`BeirFrames`, a ``{docno: text | Document | {"title", "text"}}``
    mapping, or a frame with ``docno``, ``text`` (and ``title``). ``params`` are the backend's
    (``mergeir plugins``: profile, k1, b, method, language, stemming, stopwords), validated as
    an experiment's ``first_stage`` block is. ``language`` defaults to the dataset's (else
    english). ``cache_dir``: a cache folder (``mergeir``'s ``--cache-dir``) whose ``index/`` keeps
    the index between sessions, shared with ``mergeir run``/``rerank`` (default: in memory).

    Returns ``qid``, the input's query columns, ``docno``, ``text`` (title and body, what our
    re-rankers read), ``score`` and ``rank`` (from 0, ties by docno), best first per query.
    """

    def __init__(
        self,
        corpus_or_beir_folder: Any,
        k: int = 100,
        params: Mapping[str, Any] | None = None,
        *,
        language: str | None = None,
        cache_dir: str | Path | None = None,
        backend: str = "bm25s",
    ) -> None:
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ConfigError(f"k: {short_repr(k)} is not a positive integer")
        kind = catalog().first_stage(backend, "backend")
        self.k = k
        self.backend = backend
        self.params = check_params(kind.params, dict(params or {}), "params", backend)
        corpus, own_language = _corpus(corpus_or_beir_folder, cache_dir)
        self.language = language or own_language or "english"
        self.corpus = corpus
        # the layout of mergeir's cache (Cache.index_dir): one cache folder serves both
        index_dir = resolve_cache_root(cache_dir) / "index" if cache_dir is not None else None
        self.index = kind.build(corpus, self.params, index_dir, language=self.language)

    def __repr__(self) -> str:
        return f"MergeIRBM25({self.backend}, k={self.k}, {len(self.corpus)} docs)"

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        pt.validate.query_frame(inp, extra_columns=["query"])
        query_cols = [
            c for c in pt.model.query_columns(inp) if c not in ("docno", "text", "score", "rank")
        ]
        queries = inp[query_cols].drop_duplicates("qid")
        qids = [str(q) for q in queries["qid"]]
        run = self.index.search(dict(zip(qids, map(str, queries["query"]), strict=True)), self.k)
        rows = [
            (qid, did, self.corpus[did].full_text, score, rank)
            for qid in dict.fromkeys(qids)
            for rank, (did, score) in enumerate(run.get(qid, {}).items(), pt.model.FIRST_RANK)
        ]
        hits = pd.DataFrame(rows, columns=["qid", "docno", "text", "score", "rank"]).astype(
            {"qid": object, "docno": object, "text": object, "score": "float64", "rank": "int64"}
        )
        queries = queries.assign(qid=pd.Series(qids, index=queries.index, dtype=object))
        return queries.merge(hits, on="qid", how="inner")[
            [*query_cols, "docno", "text", "score", "rank"]
        ]


# -- re-ranking ---------------------------------------------------------------------------------


@contextmanager
def _library_bars(show: bool) -> Iterator[None]:
    """transformers' own bars (``Loading weights``) only with ``show_progress``; its setting
    is back to what it was afterwards (the notebook's, not ours)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    if was and not show:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was and not show:
            hf_logging.enable_progress_bar()


class MergeIRReranker(pt.Transformer):
    """A re-ranker: one of our scorer kinds on one model, as a PyTerrier transformer.

    ``model_dir``: a model folder, a hub id or a ``quickstart:`` item (resolved as
    ``mergeir rerank`` resolves MODEL; ``cache_dir`` is where quickstart items are built).
    ``scorer``: the scorer kind (``mergeir plugins``); ``options``: its options (the
    ``--option NAME=VALUE`` of ``mergeir rerank``), validated. ``device``: auto, cpu, cuda,
    cuda:N, mps; ``batch_size``: None is the experiments' default (32); ``dtype``: auto, fp32,
    bf16, fp16.

    Takes a result frame with ``qid``, ``query``, ``docno`` and ``text``; returns it with
    ``score`` (the model's) and ``rank`` (from 0, ties by docno), sorted by qid and rank.
    """

    def __init__(
        self,
        model_dir: str | Path,
        scorer: str = "bi-encoder",
        options: Mapping[str, Any] | None = None,
        device: str = "auto",
        batch_size: int | None = None,
        *,
        dtype: str = "auto",
        cache_dir: str | Path | None = None,
        show_progress: bool = False,
    ) -> None:
        if batch_size is not None and (
            not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1
        ):
            raise ConfigError(f"batch_size: {short_repr(batch_size)} is not a positive integer")
        kind = catalog().scorer(scorer, "scorer")
        self.scorer_kind = scorer
        self.options = check_params(kind.params, dict(options or {}), "options", scorer)
        self.settings = ScoringSettings(
            device=device,
            dtype=dtype,
            batch_size=DEFAULT_BATCH_SIZE if batch_size is None else batch_size,
            show_progress=show_progress,
        )
        self.settings.torch_dtype  # noqa: B018 - a bad device or dtype fails here, first
        self.folder = resolve_checkpoint(str(model_dir), cache_root=resolve_cache_root(cache_dir))
        if kind.check:
            kind.check(self.folder)
        with _library_bars(show_progress):
            self.scorer: Scorer = kind.load(self.folder, self.options, self.settings)

    @classmethod
    def from_triplet(
        cls,
        triplet: str,
        alpha: Any,
        registry: Registry | str | Path | None = None,
        *,
        method: str = "task_arithmetic",
        params: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        device: str = "auto",
        batch_size: int | None = None,
        dtype: str = "auto",
        cache_dir: str | Path | None = None,
        show_progress: bool = False,
    ) -> MergeIRReranker:
        """Θ' of a registry triplet at ``alpha``, scored with the triplet's scorer kind and
        options (``options`` override them). The merge (``method``, ``params`` besides α) is
        written once to ``<cache>/pyterrier-merges/<key>`` by
        :func:`mergekit_ir.api.triplet_merge.merge_triplet`'s steps; the key holds the content
        fingerprints of the checkpoints, the method and its parameters, so a later call reuses
        it and a changed checkpoint merges anew. ``registry``: a :class:`Registry` or a path
        (default: as ``mergeir`` finds it)."""
        from mergekit_ir.api.merge import write_merge
        from mergekit_ir.api.triplet_merge import prepare_triplet_merge
        from mergekit_ir.experiments.sources import domain_input
        from mergekit_ir.storage.fingerprint import folder_fingerprint

        reg = (
            registry
            if isinstance(registry, Registry)
            else load_registry(registry or default_registry_path())
        )
        t = reg.triplet(triplet)
        cache_root = resolve_cache_root(cache_dir)
        prepared = prepare_triplet_merge(
            reg,
            triplet,
            method=method,
            params={**dict(params or {}), "alpha": alpha},
            cache_root=cache_root,
            where="params",
        )
        fp_dir = cache_root / "fingerprints"
        job = prepared.job
        key = cache_key(
            "pyterrier-merge",
            triplet,
            method,
            job.params,
            repr(t.alignment),
            job.ir.fingerprint(fp_dir),
            job.pretrained.fingerprint(fp_dir) if job.pretrained is not None else None,
            [
                folder_fingerprint(d.folder, salt=d.kind, cache_dir=fp_dir)
                for d in (domain_input(reg, t, ref, cache_root) for ref in t.domains)
            ],
        )
        out = cache_root / "pyterrier-merges" / key
        if not out.is_dir():  # written atomically: a folder that exists is complete
            write_merge(prepared, out, device="cpu", progress=show_progress)
        return cls(
            out,
            t.scorer,
            {**dict(t.scorer_options), **dict(options or {})},
            device,
            batch_size,
            dtype=dtype,
            cache_dir=cache_root,
            show_progress=show_progress,
        )

    def __repr__(self) -> str:
        return f"MergeIRReranker({str(self.folder)!r}, scorer={self.scorer_kind!r})"

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        pt.validate.result_frame(inp, extra_columns=["query", "text"])
        out = inp.drop(columns=["score", "rank"], errors="ignore").reset_index(drop=True)
        qids, dids = out["qid"].astype(str), out["docno"].astype(str)
        queries = dict(zip(qids, out["query"].astype(str), strict=True))
        docs = dict(zip(dids, out["text"].astype(str), strict=True))
        candidates: dict[str, dict[str, float]] = {}
        for q, d in zip(qids, dids, strict=True):
            candidates.setdefault(q, {})[d] = 0.0
        run = self.scorer.rerank(queries, candidates, docs) if candidates else {}
        out["score"] = pd.Series(
            [run[q][d] for q, d in zip(qids, dids, strict=True)], index=out.index, dtype="float64"
        )
        order = (
            pd.DataFrame({"qid": qids, "score": out["score"], "docno": dids})
            .sort_values(["qid", "score", "docno"], ascending=[True, False, True], kind="stable")
            .index
        )
        out = out.loc[order].reset_index(drop=True)
        ranks = out.groupby(qids.loc[order].to_numpy(), sort=False).cumcount()
        out["rank"] = ranks.astype("int64") + pt.model.FIRST_RANK
        return out
