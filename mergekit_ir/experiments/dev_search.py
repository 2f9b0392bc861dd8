"""The dev sweep as a search (``tuning.search: halving``): fewer passes for the same choice.

:func:`search_alpha` replaces the full grid of :meth:`ExperimentRun.tune_alpha` when the
experiment asks for a search: :func:`mergekit_ir.tuning.search.run_search` decides which grid
point to score on which dev queries, and its callback re-ranks a dev split *cut to those
queries* with Θ'(point) applied in place (``TripletRunner.merged_ranking``: the sweep and the
run cache, so an interrupted run resumes where it stopped), fuses it with the first stage with
λ fixed and returns the per-query objective. Each call asks only for queries the point has
not been scored on yet, so a cut split is its own cache entry (its queries' fingerprint is part
of the key): a warm rerun of the same search hits them all, a full-grid run's entries do not
answer for them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol

from mergekit_ir.experiments.splits import Split
from mergekit_ir.ranking import Ranking
from mergekit_ir.results import AlphaAblation, TunedAlpha, alpha_display, alpha_label
from mergekit_ir.tuning.search import SearchResult, run_search


class SearchRunner(Protocol):
    """What the search needs of a triplet's runner (``TripletRunner`` is one)."""

    def merged_ranking(self, alpha: Any, split: Split) -> Ranking: ...

    def ir_ranking(self, split: Split) -> Ranking: ...


def cut(split: Split, qids: Sequence[str], total: int | None = None) -> Split:
    """``split`` with only ``qids`` (their queries, judgments and candidates); the corpus and
    its fingerprint stay, so the first-stage and corpus parts of cache keys are the split's.
    ``total`` (the queries searched) only goes into the split's label."""
    if set(qids) >= set(split.dataset.qrels) | set(split.first_stage):
        return split
    keep = set(qids)
    ds = split.dataset
    sub = replace(
        ds,
        queries={q: t for q, t in ds.queries.items() if q in keep},
        qrels={q: r for q, r in ds.qrels.items() if q in keep},
        _fingerprint=ds.fingerprint(),
    )
    first = {q: r for q, r in split.first_stage.items() if q in keep}
    of = f" of {total}" if total is not None else ""
    return Split(sub, first, split.fs_key, f"{split.role}, {len(keep)}{of} queries")


def search_alpha(er: Any, runner: SearchRunner) -> TunedAlpha:
    """The grid point on the mean dev objective, found by ``exp.search``; the α ablation keeps
    the points scored on every dev query and the search trace (``AlphaAblation.search``)."""
    exp = er.exp
    fixed = dict(exp.fusion_params)
    devs: Mapping[str, Split] = er.devs
    by_label = {alpha_label(a): a for a in exp.alphas}
    queries = {d: sorted(er.judged(s)) for d, s in devs.items()}

    def score(label: str, dname: str, qids: Sequence[str]) -> dict[str, float]:
        split = cut(devs[dname], qids, len(queries[dname]))
        run = runner.merged_ranking(by_label[label], split)
        fused = er.fused(split.first_stage, run, fixed)
        per = er.evaluate(split, fused, [exp.objective])[exp.objective]
        return {q: per.get(q, 0.0) for q in qids}

    result = run_search(list(by_label), queries, score, exp.search, seed=exp.seed)
    best = by_label[result.chosen]
    er.opts.echo(f"  {summary(result, exp.objective)}")
    complete = result.complete()
    values = {
        d: {p: sum(result.values[d][p].values()) / n if n else 0.0 for p in complete}
        for d, n in result.totals.items()
    }
    means = {p: sum(values[d][p] for d in devs) / len(devs) for p in complete}
    references = {
        dname: {
            "BM25": er.objective(split, split.first_stage),
            "ΘT": er.objective(split, er.fused(split.first_stage, runner.ir_ranking(split), fixed)),
        }
        for dname, split in devs.items()
    }
    chosen = {d: best if d in devs or exp.transfer_alpha else 1.0 for d in er.datasets}
    return TunedAlpha(
        chosen,
        AlphaAblation(
            metric=exp.objective,
            split="dev",
            values=values,
            mean=means,
            best=result.chosen,
            order=list(by_label),
            references=references,
            search=result.to_json(),
        ),
    )


def summary(result: SearchResult, objective: str) -> str:
    """One line: the choice, what it cost against the grid, why the search stopped."""
    last = result.rounds[-1]
    scored = sum(last.queries.values())
    total = sum(result.totals.values())
    on = "all dev queries" if scored == total else f"{scored} of {total} dev queries"
    if result.stopped == "bootstrap":
        why = (
            f"the leader's bootstrap interval was above every other point "
            f"(its gain ≥ {last.margin or 0:.4f})"
        )
    elif result.stopped == "one point left":
        why = "one point was left"
    elif result.stopped == "last round":
        why = "the schedule ended on a subset (tuning.search.start)"
    else:
        why = "the last points were scored on every query"
    return (
        f"tuned α = {alpha_display(result.chosen)} (mean dev {objective} "
        f"{last.curve[result.chosen]:.4f} on {on}); successive halving: "
        f"{result.evaluations} of the grid's {result.grid_evaluations} query × model "
        f"evaluations ({result.share:.0%}), stopped as {why}"
    )
