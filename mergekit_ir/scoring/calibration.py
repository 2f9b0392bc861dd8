"""Is a reduced-precision model faithful? Compare its rankings with fp32 on a small sample.

``--dtype auto`` runs a CPU scorer in bf16 where the CPU has bf16 arithmetic (see
:func:`mergekit_ir.scoring.scorer.resolve_dtype`). bf16 keeps 8 bits of mantissa: scores move
by a fraction of a percent, which re-orders only documents whose scores are that close —
unless a model is numerically fragile (a head whose outputs barely vary, activations near the
bf16 range), and then its rankings are noise. So each *model state* (a loaded checkpoint, and
each point Θ'(α) of an in-place sweep) is checked once, before its first scores count: a
sample of a few dozen (query, document) pairs is scored by the bf16 model and by the same
weights in fp32, and the two rankings of each sample query are compared (:data:`RULE`).
A failed check makes the scorer score that state in fp32 (and say so).

The module is pure (no model code): the sample, Kendall's τ, the rule, and the registry
through which the in-place sweep tells the scorer which weights its model holds.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

Pair = tuple[str, str]


@dataclass(frozen=True)
class CalibrationRule:
    """How a state is sampled and when bf16 counts as faithful.

    ``queries`` sample queries (spread over the sorted query ids), each with its first-stage
    top ``docs_per_query`` candidates — the head of the ranking, which NDCG@10 reads. A state
    passes when the mean Kendall τ-b between the fp32 and bf16 scores of a query's sample is
    at least ``min_mean_tau`` and no query is below ``min_query_tau``; any non-finite bf16
    score (where fp32 is finite) fails it.

    Why these numbers: with 8 documents a query has 28 document pairs, and τ = 1 − 2·(swapped
    pairs)/28 (one swap: 0.929). bf16 rounding swaps only documents whose fp32 scores are within
    about 2⁻⁸ of each other. Measured on SciFact's BM25 candidates
    (``benchmarks/scoring_speed.py``, docs/performance.md "bf16 on CPU"), bf16 reorders a query's
    top 8 — never by more than one swapped pair (τ ≥ 0.929) — in 4 % of the queries for
    all-MiniLM-L6-v2 (mean τ 0.997), 8 % for splade-tiny (0.994) and 27 % for a MiniLM
    cross-encoder with a *random* head, whose scores are near-tied (0.988).
    ``min_mean_tau`` 0.98 passes up to two single swaps among the 8 sample queries and fails
    three; ``min_query_tau`` 0.85 (at most two swaps in a query's top 8) fails a state that
    reorders any one query's head. On random 8-query samples the rule passes the bi-encoder
    100 %, splade-tiny 98.5 % and the random-head cross-encoder 77.5 % of the time — a
    fragile model falls back to fp32 more often; a broken one (τ ≈ 0, NaN) always does. A
    needless fallback costs speed, never correctness.
    """

    queries: int = 8
    docs_per_query: int = 8
    min_mean_tau: float = 0.98
    min_query_tau: float = 0.85

    @property
    def identity(self) -> str:
        """A short name of the rule, part of the cache key of runs it decides."""
        return (
            f"calib:{self.queries}x{self.docs_per_query},"
            f"tau>={self.min_mean_tau:g}/{self.min_query_tau:g}"
        )

    def describe(self) -> str:
        return (
            f"mean Kendall τ ≥ {self.min_mean_tau:g} and every query ≥ {self.min_query_tau:g} "
            f"over {self.queries} queries × top-{self.docs_per_query} candidates"
        )


#: The rule ``--dtype auto`` applies.
RULE = CalibrationRule()


@dataclass(frozen=True)
class CalibrationResult:
    passed: bool
    mean_tau: float
    min_tau: float
    queries: int
    pairs: int
    nonfinite: int = 0

    def summary(self) -> str:
        bad = f", {self.nonfinite} non-finite bf16 scores" if self.nonfinite else ""
        return (
            f"mean Kendall τ {self.mean_tau:.3f}, lowest query {self.min_tau:.3f} over "
            f"{self.queries} queries / {self.pairs} pairs{bad}"
        )


# -- the sample ------------------------------------------------------------------------------


def _spread(items: Sequence[Any], n: int) -> list[Any]:
    """``n`` items evenly spread over ``items`` (all of them when there are fewer)."""
    if len(items) <= n:
        return list(items)
    return [items[(i * len(items)) // n] for i in range(n)]


def sample_from_rerank(
    queries: Mapping[str, str],
    candidates: Mapping[str, Mapping[str, float]],
    docs: Mapping[str, str],
    rule: CalibrationRule = RULE,
) -> list[list[Pair]]:
    """Per sample query, its first-stage top candidates as (query, document) texts."""
    qids = sorted(q for q, c in candidates.items() if len(c) >= 2 and q in queries)
    groups = []
    for qid in _spread(qids, rule.queries):
        ranked = sorted(candidates[qid].items(), key=lambda kv: (-float(kv[1]), kv[0]))
        groups.append([(queries[qid], docs[d]) for d, _ in ranked[: rule.docs_per_query]])
    return groups


def sample_from_pairs(pairs: Sequence[Pair], rule: CalibrationRule = RULE) -> list[list[Pair]]:
    """Pairs grouped by query text (first pairs of each sample query); when no query has two
    pairs, one group of the first pairs (their order is then the ranking compared)."""
    by_query: dict[str, list[Pair]] = {}
    for p in pairs:
        by_query.setdefault(p[0], []).append(p)
    groups = [g for g in by_query.values() if len(g) >= 2]
    if groups:
        return [g[: rule.docs_per_query] for g in _spread(groups, rule.queries)]
    flat = list(pairs[: rule.queries * rule.docs_per_query])
    return [flat] if len(flat) >= 2 else []


# -- the comparison --------------------------------------------------------------------------


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's τ-b of two score lists over the same items (ties counted as in τ-b).

    1 when the orders agree; 1 as well when both lists are constant (nothing to order), and 0
    when only one of them is.
    """
    n = len(x)
    concordant = discordant = ties_x = ties_y = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    nx = concordant + discordant + ties_y  # pairs that x orders
    ny = concordant + discordant + ties_x  # pairs that y orders
    if nx == 0 and ny == 0:
        return 1.0
    if nx == 0 or ny == 0:
        return 0.0
    return (concordant - discordant) / math.sqrt(nx * ny)


def compare(
    reference: Sequence[Sequence[float]],
    candidate: Sequence[Sequence[float]],
    rule: CalibrationRule = RULE,
) -> CalibrationResult:
    """Apply ``rule`` to per-query fp32 (``reference``) and reduced-precision scores."""
    taus, pairs, nonfinite = [], 0, 0
    for ref, got in zip(reference, candidate, strict=True):
        pairs += len(ref)
        bad = sum(
            1 for r, g in zip(ref, got, strict=True) if math.isfinite(r) and not math.isfinite(g)
        )
        nonfinite += bad
        if len(ref) >= 2:
            taus.append(0.0 if bad else kendall_tau(ref, got))
    if not taus:
        return CalibrationResult(nonfinite == 0, 1.0, 1.0, 0, pairs, nonfinite)
    mean, low = sum(taus) / len(taus), min(taus)
    passed = nonfinite == 0 and mean >= rule.min_mean_tau and low >= rule.min_query_tau
    return CalibrationResult(passed, mean, low, len(taus), pairs, nonfinite)


# -- which weights a live model holds --------------------------------------------------------


class WeightState(Protocol):
    """What changes a live model's weights in place (the α sweep) tells the calibration.

    ``state_token()`` names the weights the model holds now (``"ir"``: as loaded);
    ``write_state(model)`` writes those weights, computed from fp32 masters, into another
    instance of the same architecture (in that instance's dtype) — the fp32 reference.
    """

    def state_token(self) -> str: ...

    def write_state(self, model: Any) -> None: ...


_WEIGHT_STATES: weakref.WeakKeyDictionary[Any, WeightState] = weakref.WeakKeyDictionary()

#: The token of a model's weights as its checkpoint loaded them.
LOADED = "ir"


def register_weight_state(model: Any, provider: WeightState) -> None:
    """``provider`` changes ``model``'s weights in place from now on (one per model)."""
    _WEIGHT_STATES[model] = provider


def weight_state(model: Any) -> WeightState | None:
    try:
        return _WEIGHT_STATES.get(model)
    except TypeError:  # not weak-referenceable: nothing registered it
        return None
