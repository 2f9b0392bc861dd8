"""Fewer passes for the same choice: searching the dev grid on growing query subsets.

The dev sweep scores every grid point (α, or α with other merge parameters) on every dev
query. Most points are out of the race after a few queries: **successive halving** scores all
points on a small random subset of each dev split's queries, keeps the best ``keep`` share
(and every point tied with the last one kept: on a few queries a discrete metric ties often,
and a tie is no evidence), grows the subset by ``1 / keep`` and repeats, each round scoring the
survivors on the new queries only (per-query values are reused, never recomputed). By default
the round with the last two or more survivors scores them on *all* the queries, so the search
returns the full grid's point whenever the grid's winner survives the early rounds;
``confidence`` stops it earlier, when the bootstrap interval of the leader's gain over every
other survivor (:func:`~mergekit_ir.tuning.bootstrap.bootstrap`, queries resampled within each
dev split, at that confidence) lies above zero: the leader is separated.

Everything here is pure: :func:`run_search` calls back ``score(point, group, qids)`` for
per-query values (the runner's callback re-ranks a split cut to those queries with the in-place
sweep; a replay reads stored runs), so planted curves test it without any model. The per-query
values must not depend on which other queries are scored with them — true of the objective
after any per-query fusion (min-max ``wsum``, RRF, … with fixed weights).

``cost`` is counted in query × model evaluations: one query re-ranked by one grid point.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mergekit_ir.errors import ConfigError, key_label, short_repr
from mergekit_ir.params import Param
from mergekit_ir.tuning.bootstrap import MAX_BOOTSTRAP, bootstrap

#: ``score(point, group, qids)`` -> qid -> value, for exactly the ``qids`` asked
Score = Callable[[str, str, Sequence[str]], Mapping[str, float]]

SEARCH_METHODS = ("grid", "halving")

#: The parameters of ``tuning.search`` (method ``halving``); the registry checks them with
#: their YAML path. Open bounds (``keep`` < 1, ``start`` > 0, ``confidence`` < 1) are checked
#: by :func:`parse_search`.
HALVING_PARAMS = (
    Param("keep", float, 0.5, "share of the points kept after each round", min=0.0, max=1.0),
    Param(
        "start",
        float,
        None,
        "share of each dev split's queries in the first round (default: the share that gives "
        "the last round all queries)",
        min=0.0,
        max=1.0,
    ),
    Param("min_queries", int, 5, "fewest queries of a dev split a round scores", min=1),
    Param(
        "confidence",
        float,
        None,
        "stop early when the bootstrap interval of the leader's gain over every other point, "
        "at this confidence, is above zero (off: null)",
        min=0.5,
        max=1.0,
    ),
    Param("bootstrap", int, 1000, "resamples for the early stop", min=1, max=MAX_BOOTSTRAP),
)


@dataclass(frozen=True)
class SearchSpec:
    """How the dev sweep searches the grid (``tuning.search``)."""

    method: str = "grid"
    keep: float = 0.5
    start: float | None = None
    min_queries: int = 5
    confidence: float | None = None
    bootstrap: int = 1000

    def params(self) -> dict[str, Any]:
        """The halving parameters as given (for results.json and the report)."""
        if self.method == "grid":
            return {}
        return {p.name: getattr(self, p.name) for p in HALVING_PARAMS}

    def describe(self) -> str:
        if self.method == "grid":
            return "every grid point on every dev query"
        start = "auto" if self.start is None else f"{self.start:g}"
        stop = (
            f", stop when the leader's {self.confidence:g} bootstrap interval ({self.bootstrap} "
            "resamples) is above every other point"
            if self.confidence is not None
            else ""
        )
        return f"successive halving (keep {self.keep:g}, start {start}{stop})"


def parse_search(raw: Any, path: str) -> SearchSpec:
    """``tuning.search``: ``grid``, ``halving`` or ``{method: halving, keep: …, …}``; errors
    name the YAML path (``path`` is the ``search`` key's)."""
    if isinstance(raw, str):
        raw = {"method": raw}
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"{path}: expected grid, halving or {{method: halving, keep: 0.5, ...}}, "
            f"got {type(raw).__name__} {short_repr(raw)}"
        )
    given = dict(raw)
    method = given.pop("method", "halving" if given else "grid")
    if method not in SEARCH_METHODS:
        raise ConfigError(
            f"{path}.method: unknown search {short_repr(method)} (one of {', '.join(SEARCH_METHODS)})"
        )
    if method == "grid":
        if given:
            first = next(iter(given))
            raise ConfigError(
                f"{path}.{key_label(first)}: the grid search takes no parameters "
                "(they are for method: halving)"
            )
        return SearchSpec()
    by_name = {p.name: p for p in HALVING_PARAMS}
    for k in given:
        if k not in by_name:
            raise ConfigError(
                f"{path}.{key_label(k)}: unknown parameter of the halving search "
                f"(it takes: method, {', '.join(by_name)})"
            )
    values = {
        p.name: p.check_scalar(given.get(p.name, p.default), f"{path}.{p.name}")
        for p in HALVING_PARAMS
    }
    for name, value in values.items():
        if value is None and name in ("keep", "min_queries", "bootstrap"):
            raise ConfigError(f"{path}.{name}: give a value (or leave it out for the default)")
    if not 0 < values["keep"] < 1:
        raise ConfigError(f"{path}.keep: {values['keep']:g} is outside (0, 1)")
    if values["start"] is not None and not 0 < values["start"] <= 1:
        raise ConfigError(f"{path}.start: {values['start']:g} is outside (0, 1]")
    if values["confidence"] is not None and not values["confidence"] < 1:
        raise ConfigError(f"{path}.confidence: {values['confidence']:g} is outside [0.5, 1)")
    return SearchSpec(method="halving", **values)


# -- the schedule --------------------------------------------------------------------------------
def survivors(points: int, keep: float) -> list[int]:
    """Points scored in each round: ``points``, then the best ``ceil(keep × n)`` (at least
    one fewer) while more than two are left; the last round is the one that picks its best."""
    counts = [points]
    while counts[-1] > 2:
        n = counts[-1]
        following = min(n - 1, math.ceil(keep * n))
        if following <= 1:
            break
        counts.append(following)
    return counts


def fractions(points: int, spec: SearchSpec) -> list[float]:
    """Share of the queries each round has scored by its end (nested subsets)."""
    rounds = len(survivors(points, spec.keep))
    start = spec.start if spec.start is not None else spec.keep ** (rounds - 1)
    return [min(1.0, start / spec.keep**i) for i in range(rounds)]


def expected_cost(points: int, spec: SearchSpec) -> float:
    """Query × model evaluations as a share of the grid's, for many queries and no early stop
    (what ``--dry-run`` prices; few queries round subsets up, and the stop only saves)."""
    if spec.method == "grid" or points <= 1:
        return 1.0
    counts, fracs = survivors(points, spec.keep), fractions(points, spec)
    cost, before = 0.0, 0.0
    for n, f in zip(counts, fracs, strict=True):
        cost += n * (f - before)
        before = f
        if f >= 1.0:
            break
    return cost / points


def passes(points: int, spec: SearchSpec) -> int:
    """Model passes (full or partial) of one dev split: one per round and surviving point."""
    if spec.method == "grid" or points <= 1:
        return points
    counts, fracs = survivors(points, spec.keep), fractions(points, spec)
    total = 0
    for n, f in zip(counts, fracs, strict=True):
        total += n
        if f >= 1.0:
            break
    return total


# -- the search ------------------------------------------------------------------------------
@dataclass
class SearchRound:
    """One round: how many queries of each group were scored by its end, the points scored
    (grid order), their mean-of-group-means on those queries, and who went on."""

    queries: dict[str, int]
    points: list[str]
    curve: dict[str, float]
    kept: list[str]
    #: with ``confidence``: the lowest bound, over the other points, of the bootstrap interval
    #: of the leader's gain over that point (> 0: the leader is separated)
    margin: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "queries": dict(self.queries),
            "points": list(self.points),
            "curve": {p: round(v, 6) for p, v in self.curve.items()},
            "kept": list(self.kept),
            "margin": None if self.margin is None else round(self.margin, 6),
        }


@dataclass
class SearchResult:
    """The chosen point, what it cost against the full grid, and the trace."""

    method: str
    chosen: str
    evaluations: int
    grid_evaluations: int
    stopped: str  # "all queries" | "one point left" | "bootstrap" | "last round" (on a subset)
    rounds: list[SearchRound]
    #: group -> point -> qid -> value, for every (point, query) scored
    values: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)  # group -> its queries
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def share(self) -> float:
        return self.evaluations / self.grid_evaluations if self.grid_evaluations else 1.0

    def complete(self) -> list[str]:
        """Points scored on every query of every group (grid order of the first round)."""
        order = self.rounds[0].points if self.rounds else []
        return [
            p
            for p in order
            if all(len(self.values.get(g, {}).get(p, {})) == n for g, n in self.totals.items())
        ]

    def to_json(self) -> dict[str, Any]:
        """The trace results.json keeps (per-query values stay out: the cache holds the runs)."""
        return {
            "method": self.method,
            "params": dict(self.params),
            "chosen": self.chosen,
            "evaluations": self.evaluations,
            "grid_evaluations": self.grid_evaluations,
            "stopped": self.stopped,
            "queries": dict(self.totals),
            "rounds": [r.to_json() for r in self.rounds],
        }


def _curve(
    values: Mapping[str, Mapping[str, Mapping[str, float]]],
    points: Sequence[str],
    subsets: Mapping[str, Sequence[str]],
) -> dict[str, float]:
    """Point -> mean over groups of the mean over the group's subset (the dev rule)."""
    out = {}
    for p in points:
        means = [
            sum(values[g][p][q] for q in qids) / len(qids) if qids else 0.0
            for g, qids in subsets.items()
        ]
        out[p] = sum(means) / len(means) if means else 0.0
    return out


def _ranked(curve: Mapping[str, float], order: Sequence[str]) -> list[str]:
    """Best first; a tie goes to the earlier point in the grid."""
    return sorted(order, key=lambda p: (-curve[p], order.index(p)))


def run_search(
    points: Sequence[str],
    queries: Mapping[str, Sequence[str]],
    score: Score,
    spec: SearchSpec = SearchSpec(),
    seed: int = 0,
) -> SearchResult:
    """Choose a point of ``points`` (grid order: ties go to the earlier one) on the mean over
    groups of each group's mean per-query value — the dev rule — scoring as few
    (point, query) pairs as ``spec`` allows. ``queries`` is group -> its query ids."""
    points = list(points)
    if not points:
        raise ValueError("no grid points to search")
    if len(set(points)) != len(points):
        raise ValueError("grid points must be distinct")
    groups = {g: sorted(set(map(str, qids))) for g, qids in sorted(queries.items())}
    totals = {g: len(q) for g, q in groups.items()}
    values: dict[str, dict[str, dict[str, float]]] = {g: {} for g in groups}
    spent = 0

    def fill(p: str, g: str, qids: Sequence[str]) -> None:
        nonlocal spent
        have = values[g].setdefault(p, {})
        todo = [q for q in qids if q not in have]
        if not todo:
            return
        got = score(p, g, todo)
        missing = [q for q in todo if q not in got]
        if missing:
            raise ValueError(f"score({p!r}, {g!r}) returned no value for query {missing[0]!r}")
        for q in todo:
            v = float(got[q])
            if not math.isfinite(v):
                raise ValueError(f"score({p!r}, {g!r}) gave {v} for query {q!r}")
            have[q] = v
        spent += len(todo)

    grid_cost = len(points) * sum(totals.values())
    if spec.method == "grid" or len(points) == 1:
        for p in points:
            for g, qids in groups.items():
                fill(p, g, qids)
        curve = _curve(values, points, groups)
        best = _ranked(curve, points)[0]
        rnd = SearchRound(dict(totals), points, curve, [best])
        return SearchResult(
            "grid" if spec.method == "grid" else spec.method,
            best,
            spent,
            grid_cost,
            "all queries",
            [rnd],
            values,
            totals,
            spec.params(),
        )

    rng = np.random.default_rng(seed)
    order = {g: [qids[i] for i in rng.permutation(len(qids))] for g, qids in groups.items()}
    counts, fracs = survivors(len(points), spec.keep), fractions(len(points), spec)
    alive = list(points)
    rounds: list[SearchRound] = []
    stopped = "one point left"
    for i, frac in enumerate(fracs):
        # the last scheduled round always scores all queries: it is the one that picks
        last = i == len(fracs) - 1 and spec.start is None
        sizes = {
            g: n if frac >= 1 or last else min(n, max(spec.min_queries, math.ceil(frac * n)))
            for g, n in totals.items()
        }
        subsets = {g: order[g][: sizes[g]] for g in groups}
        for p in alive:
            for g, qids in subsets.items():
                fill(p, g, qids)
        curve = _curve(values, alive, subsets)
        ranked = _ranked(curve, alive)
        full = all(sizes[g] == totals[g] for g in groups)
        if full:
            rounds.append(SearchRound(sizes, alive, curve, ranked[:1]))
            stopped = "all queries"
            break
        margin = None
        if spec.confidence is not None and len(alive) > 1:
            margin = _margin(values, alive, subsets, ranked[0], spec, seed)
            if margin > 0:
                rounds.append(SearchRound(sizes, alive, curve, ranked[:1], margin))
                stopped = "bootstrap"
                break
        if i + 1 == len(fracs):  # the schedule ends on a subset (an explicit start)
            rounds.append(SearchRound(sizes, alive, curve, ranked[:1], margin))
            stopped = "last round"
            break
        # the best counts[i + 1], and every point tied with the last of them: a tie on a
        # subset (a discrete metric on few queries) says nothing, so it eliminates no one
        bar = curve[ranked[counts[i + 1] - 1]]
        kept = [p for p in alive if curve[p] >= bar - 1e-12 * max(1.0, abs(bar))]  # grid order
        rounds.append(SearchRound(sizes, alive, curve, kept, margin))
        alive = kept
        if len(alive) == 1:
            stopped = "one point left"
            break
    chosen = rounds[-1].kept[0]  # the last round keeps one point
    return SearchResult(
        spec.method, chosen, spent, grid_cost, stopped, rounds, values, totals, spec.params()
    )


def _margin(
    values: Mapping[str, Mapping[str, Mapping[str, float]]],
    alive: Sequence[str],
    subsets: Mapping[str, Sequence[str]],
    leader: str,
    spec: SearchSpec,
    seed: int,
) -> float:
    """The lowest, over the other points of ``alive``, lower bound of the bootstrap interval
    (at ``spec.confidence``) of ``leader``'s gain over that point, queries resampled within each
    group's subset — :func:`~mergekit_ir.tuning.bootstrap.bootstrap`'s gain interval with the
    other point as the baseline. Above zero: the leader is separated from every other point
    (a point tied with it on every query gives 0, never separated)."""
    sub = {g: {leader: {q: values[g][leader][q] for q in qids}} for g, qids in subsets.items()}
    lowest = math.inf
    for other in alive:
        if other == leader:
            continue
        base = {g: {q: values[g][other][q] for q in qids} for g, qids in subsets.items()}
        got = bootstrap(
            sub, base, [leader], leader, {}, spec.bootstrap, spec.confidence or 0.95, seed
        )
        lowest = min(lowest, got.gain_interval[0])
    return lowest
