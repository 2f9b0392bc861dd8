"""Per-query effectiveness with ranx, made deterministic and trec_eval-compatible.

ranx breaks score ties by Python's salted ``hash`` of the document id, so two
processes can score the same run differently. Before handing a run to ranx we
therefore rank it ourselves the way trec_eval (and so ir_measures) does, score
descending then document id descending, and give ranx scores that encode that
rank. With that, every metric here equals trec_eval's, ties included.

Every query in the qrels gets a score; one missing from the run (or with no
relevant document) scores 0, as trec_eval with ``-c`` would, so means are over
the full query set and per-query vectors line up for paired tests.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Mapping

from mergekit_ir.errors import ConfigError, short_repr
from mergekit_ir.ranking import Ranking

DEFAULT_METRICS: tuple[str, ...] = ("P@10", "NDCG@3", "NDCG@10", "MAP@100")

Qrels = Mapping[str, Mapping[str, int]]

# Display prefix (lower case) -> ranx metric name.
_PREFIXES: dict[str, str] = {
    "p": "precision",
    "precision": "precision",
    "ndcg": "ndcg",
    "map": "map",
    "ap": "map",
    "r": "recall",
    "recall": "recall",
    "mrr": "mrr",
    "rr": "mrr",
}
_METRIC = re.compile(r"^\s*(?P<name>[A-Za-z]+)\s*(?:@\s*(?P<k>\d+))?\s*$")
_KNOWN = "P@k, NDCG@k, MAP@k, R@k, MRR@k (k a positive integer, case-insensitive)"


def ranx_metric(name: str) -> str:
    """Map a paper-style name (``P@10``) to ranx's (``precision@10``); one place to validate."""
    m = _METRIC.match(name) if isinstance(name, str) else None
    prefix = _PREFIXES.get(m.group("name").lower()) if m else None
    if m is None or prefix is None:
        raise ConfigError(f"unknown metric {short_repr(name)}: use one of {_KNOWN}")
    k = m.group("k")
    if k is None:
        return prefix
    if int(k) <= 0:
        raise ConfigError(
            f"metric {short_repr(name)}: the cutoff must be positive; use one of {_KNOWN}"
        )
    return f"{prefix}@{int(k)}"


def _ranked(docs: Mapping[str, float]) -> dict[str, float]:
    """Replace scores by ranks, ties broken by document id descending (trec_eval's order)."""
    order = sorted(docs.items(), key=lambda kv: (float(kv[1]), kv[0]), reverse=True)
    n = len(order)
    return {doc: float(n - i) for i, (doc, _) in enumerate(order)}


def evaluate(qrels: Qrels, run: Ranking, metrics: Iterable[str]) -> dict[str, dict[str, float]]:
    """Metric (as named by the caller) -> qid -> score for every query in ``qrels``."""
    names = list(metrics)
    ranx_names = [ranx_metric(n) for n in names]
    out: dict[str, dict[str, float]] = {n: {} for n in names}
    qids = sorted(str(q) for q in qrels)
    # ranx cannot take empty queries; they score 0 for every metric here.
    scored = [q for q in qids if run.get(q) and any(int(r) >= 1 for r in qrels[q].values())]
    values: dict[str, list[float]] = {}
    if scored:
        from ranx import evaluate as ranx_evaluate

        # Same insertion order in both dicts: ranx pairs them by position.
        q_dict = {q: {str(d): int(r) for d, r in qrels[q].items()} for q in scored}
        r_dict = {q: _ranked({str(d): s for d, s in run[q].items()}) for q in scored}
        unique = list(dict.fromkeys(ranx_names))
        # ranx 0.3.21 raises KeyError for a single metric with return_mean=False;
        # with two names it always returns the dict.
        asked = unique if len(unique) > 1 else unique * 2
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numba's uint64->int64 cast notices
            res = ranx_evaluate(q_dict, r_dict, asked, return_mean=False, save_results_in_run=False)
        values = {rn: [float(x) for x in res[rn]] for rn in set(ranx_names)}
    for name, rn in zip(names, ranx_names, strict=True):
        per_q = dict(zip(scored, values.get(rn, []), strict=True))
        out[name] = {q: per_q.get(q, 0.0) for q in qids}
    return out


def mean_scores(per_query: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Metric -> mean over its queries (0.0 for an empty query set)."""
    return {m: (sum(v.values()) / len(v) if v else 0.0) for m, v in per_query.items()}
