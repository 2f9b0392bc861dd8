"""Score fusion of a first stage with a re-ranker, through ranx.

The paper's final score is ``λ_BM25·norm(BM25) + λ_model·norm(model)`` with min-max
normalisation per query: ranx's ``wsum`` after ``min-max``. Any other ranx fusion
method works too. Runs are plain dicts in and out; queries missing from one run
are given an empty result list there, since ranx needs equal query sets.

That one paper path, ``wsum`` after ``min-max``, is also computed here in plain
Python, operation for operation as ranx does it (the test suite checks the numbers
are identical): ranx compiles its numba kernels and converts every run to numba
typed dicts in each new process, about 11 s before the first fused run, which
dominated the quickstart and every λ grid search. Every other method goes to ranx.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from itertools import product
from typing import Any

from mergekit_ir.errors import ConfigError
from mergekit_ir.evaluation.metrics import Qrels, evaluate, mean_scores, ranx_metric
from mergekit_ir.ranking import Ranking

# Friendly aliases -> ranx's names (ranx's own names are accepted as they are).
_ALIASES: dict[str, str] = {
    "combsum": "sum",
    "combmnz": "mnz",
    "combmax": "max",
    "combmin": "min",
    "combmed": "med",
    "combanz": "anz",
    "combgmnz": "gmnz",
    "weighted_bordafuse": "w_bordafuse",
    "weighted_condorcet": "w_condorcet",
}
_METHODS = frozenset(
    {
        "bayesfuse",
        "bordafuse",
        "anz",
        "gmnz",
        "max",
        "med",
        "min",
        "mnz",
        "sum",
        "condorcet",
        "isr",
        "log_isr",
        "logn_isr",
        "mapfuse",
        "mixed",
        "posfuse",
        "probfuse",
        "rbc",
        "rrf",
        "segfuse",
        "slidefuse",
        "w_bordafuse",
        "w_condorcet",
        "wmnz",
        "wsum",
    }
)
_NORMS = frozenset(
    {
        "min-max",
        "min_max",
        "min-max-inverted",
        "min_max_inverted",
        "max",
        "rank",
        "sum",
        "zmuv",
        "borda",
    }
)
# Methods whose only hyper-parameter is one weight per run (searched on a grid here).
_WEIGHTED = frozenset({"wsum", "wmnz", "w_bordafuse", "w_condorcet", "mixed"})

#: Every fusion method name :func:`fuse` accepts (ranx's names and our aliases): the one list
#: that ``mergeir validate`` checks against.
FUSION_METHODS: tuple[str, ...] = tuple(sorted(_METHODS | set(_ALIASES)))
#: Every normalisation :func:`fuse` accepts; ``none`` means no normalisation.
NORMS: tuple[str, ...] = (*sorted(_NORMS), "none")


def fusion_method_name(method: str) -> str:
    """ranx's name for a fusion method (aliases and case folded); a ConfigError for unknown ones."""
    name = _ALIASES.get(method.lower(), method.lower()) if isinstance(method, str) else ""
    if name not in _METHODS:
        raise ConfigError(
            f"unknown ranx fusion method {method!r}: use one of {', '.join(FUSION_METHODS)}"
        )
    return name


def norm_name(norm: str | None) -> str | None:
    """ranx's name for a normalisation (None for none); a ConfigError for unknown ones."""
    if norm is None or norm == "none":
        return None
    if norm not in _NORMS:
        raise ConfigError(f"unknown fusion norm {norm!r}: use one of {', '.join(NORMS)}")
    return norm


def _ranx_runs(runs: Sequence[Ranking], qids: Sequence[str] | None = None) -> list[Any]:
    from ranx import Run as RanxRun

    if len(runs) < 2:
        raise ConfigError(f"fusion needs at least two runs, got {len(runs)}")
    all_q = sorted(set().union(*(r.keys() for r in runs))) if qids is None else list(qids)
    out = []
    for i, r in enumerate(runs):
        d = {q: {str(doc): float(s) for doc, s in r.get(q, {}).items()} for q in all_q}
        out.append(RanxRun.from_dict(d, name=f"run_{i + 1}"))
    return out


def _to_dict(run: Any) -> Ranking:
    return {
        str(q): {str(d): float(s) for d, s in docs.items()} for q, docs in run.to_dict().items()
    }


def _min_max(results: Mapping[str, float]) -> dict[str, float]:
    """ranx's ``min-max`` for one query: ``(s − min) / max(max − min, 1e-9)``.

    As numba's ``min``/``max``: NaN scores are skipped unless all are NaN; empty gives 0.
    """
    values = list(results.values())
    finite = [v for v in values if v == v]
    if finite:
        lo, hi = min(finite), max(finite)
    else:
        lo = hi = math.nan if values else 0
    den = max(hi - lo, 1e-9)
    return {d: (s - lo) / den for d, s in results.items()}


def wsum_min_max(runs: Sequence[Ranking], weights: Sequence[float]) -> Ranking:
    """ranx ``fuse(norm="min-max", method="wsum")`` in plain Python, with the same numbers.

    Per query (the union over runs): min-max each run, then each document scores
    ``Σ_i w_i · norm_i(d)`` summed left to right from 0, a document missing from a run
    counting 0, exactly as ranx's ``_weighted_sum`` does.
    """
    if len(runs) < 2:
        raise ConfigError(f"fusion needs at least two runs, got {len(runs)}")
    qids = sorted(set().union(*(r.keys() for r in runs)))
    out: Ranking = {}
    for q in qids:
        normed = [_min_max({str(d): float(s) for d, s in r.get(q, {}).items()}) for r in runs]
        fused: dict[str, float] = {}
        for res in normed:
            for d in res:
                if d not in fused:
                    total = 0.0  # left to right, as numba does (Python >= 3.12's sum() compensates)
                    for w, n in zip(weights, normed, strict=True):
                        total = total + w * n.get(d, 0.0)
                    fused[d] = total
        out[str(q)] = fused
    return out


def fuse(
    runs: Sequence[Ranking],
    method: str = "wsum",
    norm: str | None = "min-max",
    params: Mapping[str, Any] | None = None,
) -> Ranking:
    """Normalise each run per query, then combine them with a ranx fusion method."""
    name, nrm = fusion_method_name(method), norm_name(norm)
    p = dict(params or {})
    if "weights" in p:
        if len(p["weights"]) != len(runs):
            raise ConfigError(
                f"fusion weights {list(p['weights'])}: give one weight per run ({len(runs)})"
            )
        p["weights"] = [float(w) for w in p["weights"]]
    if name == "wsum" and nrm in ("min-max", "min_max") and set(p) == {"weights"}:
        return wsum_min_max(runs, p["weights"])
    from ranx import fuse as ranx_fuse

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numba's uint64->int64 cast notices
        try:
            fused = ranx_fuse(_ranx_runs(runs), norm=nrm, method=name, params=p)
        except TypeError as e:  # a wrong or missing parameter name
            raise ConfigError(f"fusion method {method!r}: bad params {sorted(p)}: {e}") from e
    return _to_dict(fused)


def _weight_grid(n_runs: int, step: float) -> list[tuple[float, ...]]:
    """ranx's grid (0..1 by ``step``, weights summing to one), with a tolerant sum check."""
    digits = max(0, -math.floor(math.log10(step))) + 1 if step < 1 else 0
    ticks = sorted({round(i * step, digits) for i in range(int(round(1 / step)) + 1)})
    return [w for w in product(ticks, repeat=n_runs) if abs(sum(w) - 1.0) < 1e-9]


def _plain(v: Any) -> Any:
    """numpy scalars/arrays -> Python values, so params stay JSON-able."""
    if hasattr(v, "tolist"):
        return v.tolist()
    if isinstance(v, (list, tuple)):
        return type(v)(_plain(x) for x in v)
    return v


def tune_fusion(
    qrels: Qrels,
    runs: Sequence[Ranking],
    method: str = "wsum",
    norm: str | None = "min-max",
    metric: str = "NDCG@10",
    step: float = 0.1,
) -> dict[str, Any]:
    """Best fusion params on ``qrels`` (e.g. ``{"weights": (0.3, 0.7)}``).

    For weight-only methods and ``rrf`` this replays ``ranx.optimize_fusion``'s grid
    and its tie rule (a later config wins a tie) but scores with :func:`evaluate`,
    whose tie-breaking does not depend on the hash seed, so the answer is
    reproducible. Other methods go to ``ranx.optimize_fusion`` unchanged.
    """
    name, nrm = fusion_method_name(method), norm_name(norm)
    ranx_metric(metric)  # validate early
    if name in _WEIGHTED:
        trials: list[dict[str, Any]] = [{"weights": w} for w in _weight_grid(len(runs), step)]
    elif name == "rrf":
        trials = [{"k": k} for k in range(10, 101, 10)]
    else:
        from ranx import Qrels as RanxQrels
        from ranx import optimize_fusion

        qids = sorted(qrels)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                best = optimize_fusion(
                    RanxQrels.from_dict({q: dict(qrels[q]) for q in qids}),
                    _ranx_runs(runs, qids),
                    norm=nrm,
                    method=name,
                    metric=ranx_metric(metric),
                    show_progress=False,
                )
            except ValueError as e:
                raise ConfigError(f"fusion method {method!r} cannot be tuned: {e}") from e
        return {str(k): _plain(v) for k, v in dict(best).items()}
    best_score, best_params = -math.inf, trials[0]
    for params in trials:
        fused = fuse(runs, method=name, norm=nrm, params=params)
        score = mean_scores(evaluate(qrels, fused, [metric]))[metric]
        if score >= best_score:
            best_score, best_params = score, params
    return best_params
