"""``pseudo-queries``: a synthetic dev set built from the target corpus alone, no generator.

Each sampled document yields one query and is its one relevant document:

- ``title``: the title is the query and is removed from that document's indexed text;
- ``ict``: inverse cloze (Lee et al., ACL 2019): one sentence is the query, removed from the text;
- ``crop``: a random span of ``span`` words is the query, removed from the text.

The set is seeded and cached (a JSON file keyed by the corpus content, source, n, seed and
span). It is scored exactly like a dev split: the experiment's first stage over the corpus
with those pairs' texts modified, the same re-ranking and fusion. It reads only the corpus:
the test queries and their judgments never enter it.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

from mergekit_ir import AlphaSelector, Dataset, Document, Param, atomic, hookimpl

VERSION = 1
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE.split(text.strip()) if s.strip()]


def _pair(doc: Document, source: str, rng: random.Random, span: int) -> tuple[str, Document] | None:
    """(query, the document as indexed for this pair), or None when it cannot give one."""
    if source == "title":
        if not doc.title.strip() or not doc.text.strip():
            return None
        return doc.title.strip(), Document(title="", text=doc.text)
    if source == "ict":
        sents = sentences(doc.text)
        if len(sents) < 2:
            return None
        i = rng.randrange(len(sents))
        return sents[i], Document(title=doc.title, text=" ".join(sents[:i] + sents[i + 1 :]))
    words = doc.text.split()
    n = min(span, len(words) // 2)
    if n < 1:
        return None
    start = rng.randrange(len(words) - n + 1)
    rest = words[:start] + words[start + n :]
    return " ".join(words[start : start + n]), Document(title=doc.title, text=" ".join(rest))


def build_pseudo_queries(
    corpus: dict[str, Document], source: str, n: int, seed: int, span: int = 10
) -> tuple[dict[str, str], dict[str, dict[str, int]], dict[str, Document]]:
    """(queries, qrels, changed documents) from ``corpus`` alone, deterministic under ``seed``."""
    rng = random.Random(f"{seed}:{source}:{span}")
    order = sorted(corpus)
    rng.shuffle(order)
    queries, qrels, changed = {}, {}, {}
    for did in order:
        if len(queries) >= n:
            break
        got = _pair(corpus[did], source, rng, span)
        if got is None or not got[0].strip() or not got[1].full_text.strip():
            continue
        qid = f"pq{len(queries)}"
        queries[qid], qrels[qid], changed[did] = got[0], {did: 1}, got[1]
    return queries, qrels, changed


def _cached(ds: Dataset, params, cache_dir: Path):
    key = hashlib.sha256(
        json.dumps(
            [
                VERSION,
                ds.fingerprint(),
                params["source"],
                params["n"],
                params["seed"],
                params["span"],
            ]
        ).encode()
    ).hexdigest()[:16]
    path = cache_dir / "pseudo-queries" / f"{key}.json"
    if path.is_file():
        try:
            raw = json.loads(path.read_text())
            changed = {d: Document(**v) for d, v in raw["changed"].items()}
            return raw["queries"], raw["qrels"], changed
        except (ValueError, KeyError, TypeError):
            pass  # a broken cache entry is rebuilt
    q, r, changed = build_pseudo_queries(
        ds.corpus, params["source"], params["n"], params["seed"], params["span"]
    )
    atomic.write_text(
        path,
        json.dumps(
            {
                "queries": q,
                "qrels": r,
                "changed": {d: {"title": c.title, "text": c.text} for d, c in changed.items()},
            }
        ),
    )
    return q, r, changed


def pseudo_dataset(ds: Dataset, params, cache_dir: Path) -> Dataset:
    queries, qrels, changed = _cached(ds, params, cache_dir)
    corpus = {**ds.corpus, **changed}
    return Dataset(
        name=f"{ds.name}~{params['source']}",
        corpus=corpus,
        queries=queries,
        qrels=qrels,
        language=ds.language,
        source=f"pseudo-queries({params['source']}) of {ds.source or ds.name}",
    )


def select_pseudo(ctx, params):
    out = {}
    for dname in ctx.datasets:
        pseudo = pseudo_dataset(ctx.corpus(dname), params, ctx.cache_dir)
        if not pseudo.queries:
            ctx.echo(f"  {ctx.label}: {dname} gives no {params['source']} pseudo-queries; α = 1")
            continue
        split = ctx.make_split(pseudo, "pseudo-dev")
        values, base = ctx.sweep(split)
        out[dname] = ctx.choose(
            {dname: values}, {dname: base}, {"pseudo_queries": len(pseudo.queries), **params}
        )
    return out


@hookimpl
def register_alpha_selectors(register):
    register(
        AlphaSelector(
            name="pseudo-queries",
            description="α tuned on pseudo-queries built from the target corpus (no labels)",
            select=select_pseudo,
            params=(
                Param(
                    "source", str, "title", "title | ict | crop", choices=("title", "ict", "crop")
                ),
                Param("n", int, 300, "number of pseudo-queries", min=1),
                Param("seed", int, 0, "sampling seed"),
                Param("span", int, 10, "crop: words per query", min=1),
            ),
        )
    )
