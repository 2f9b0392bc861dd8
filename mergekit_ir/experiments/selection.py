"""The α-selection step: run the experiment's selectors through one interface.

:func:`select_alpha` builds a :class:`~mergekit_ir.tuning.selector.SelectionContext` on one
triplet's runner — scoring a candidate α goes through ``TripletRunner.merged_ranking`` (the in-place
sweep and the run cache) and the experiment's fusion with λ fixed, as α tuning on dev does —
calls each selector, replaces the Θ'(tuned α) α by the first selector's choice, and records the
test objective at every α (the oracle curve the selection report compares against).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from mergekit_ir.evaluation.datasets import Dataset
from mergekit_ir.experiments.registry import Experiment
from mergekit_ir.experiments.splits import Split
from mergekit_ir.plugin_host import catalog
from mergekit_ir.ranking import Ranking
from mergekit_ir.results import AlphaSelection, TunedAlpha, alpha_label
from mergekit_ir.tuning.adamerging import MergeAccess
from mergekit_ir.tuning.selector import BASELINE_ALPHA, SelectionContext, alpha_value


class MergedRankings(Protocol):
    """What selection needs of a triplet's runner: Θ'(α)'s ranking of a split (in place, cached)."""

    def merged_ranking(self, alpha: Any, split: Split) -> Ranking: ...


class SelectionHost(Protocol):
    """What selection needs of the experiment's run (``ExperimentRun`` is one): its splits,
    fusion and evaluation, kept narrow so this step does not depend on the runner."""

    exp: Experiment
    tests: Mapping[str, Split]
    devs: Mapping[str, Split]
    opts: Any  # RunOptions: cache root and echo

    def fused(self, first: Ranking, model: Ranking, params: Mapping[str, Any]) -> Ranking: ...

    def evaluate(
        self, split: Split, run: Ranking, metrics: Sequence[str]
    ) -> dict[str, dict[str, float]]: ...

    def objective(self, split: Split, run: Ranking) -> float: ...

    first_stage_split: Callable[..., Split]


def unjudged(ds: Dataset) -> Dataset:
    """The test split as a label-free selector may see it: corpus and queries, no qrels."""
    return Dataset(ds.name, ds.corpus, ds.queries, {}, ds.language, ds.source)


def context(er: SelectionHost, runner: MergedRankings, spec: Any) -> SelectionContext:
    exp = er.exp
    fixed = dict(exp.fusion_params)

    def ranking(alpha: Any, split: Any):
        return er.fused(split.first_stage, runner.merged_ranking(alpha, split), fixed)

    def score(alpha: Any, split: Any) -> dict[str, float]:
        return er.evaluate(split, ranking(alpha, split), [exp.objective])[exp.objective]

    return SelectionContext(
        label=spec.label,
        alphas=exp.alphas,
        objective=exp.objective,
        datasets=tuple(er.tests),
        seed=exp.seed,
        guard=spec.guard,
        samples=spec.bootstrap,
        confidence=spec.confidence,
        transfer=exp.transfer_alpha,
        cache_dir=er.opts.cache.root,
        corpus=lambda d: unjudged(er.tests[d].dataset),
        dev=lambda d: er.devs.get(d),
        make_split=er.first_stage_split,
        ranking=ranking,
        score=score,
        echo=er.opts.echo,
        merge_access=lambda: merge_access(runner),
    )


def merge_access(runner: Any) -> MergeAccess:
    """The triplet's live ΘT scorer and in-place sweep, for a selector that learns through the
    weights (AdaMerging); the model holds ΘT between calls."""
    sweep = runner.sweep()
    return MergeAccess(
        runner.ir_scorer(), sweep.slots, runner.exp.method, runner.exp.merge_params.get("weights")
    )


def _short(label: str | None) -> str | None:
    """A learnt layer-wise α (AdaMerging's filter rules) is named, not spelled, in the log."""
    return "learnt, layer-wise (see selection.md)" if label and label.startswith("[") else label


def select_alpha(
    er: SelectionHost, runner: MergedRankings, tuned: TunedAlpha
) -> tuple[AlphaSelection, TunedAlpha]:
    """Every selector's choice, and a new :class:`TunedAlpha` whose Θ'(tuned α) α per dataset
    is the first selector's choice (``tuned`` itself is left as it was)."""
    exp = er.exp
    out = AlphaSelection(primary=exp.alpha_selectors[0].label, metric=exp.objective)
    if tuned.ablation is not None:
        out.dev_alpha = {d: tuned.ablation.best for d in tuned.ablation.values}
        if exp.transfer_alpha:
            out.dev_alpha = {d: tuned.ablation.best for d in er.tests}
    for spec in exp.alpha_selectors:
        sel = catalog().alpha_selector(spec.name)
        # no stage timer here: the scoring, fusion and evaluation inside are timed already
        choices = sel.select(context(er, runner, spec), dict(spec.params))
        out.choices[spec.label] = choices
        for dname, c in choices.items():
            iv = "" if c.interval is None else f" [{c.interval[0]:g}, {c.interval[1]:g}]"
            gi = c.gain_interval
            gain = (
                "" if gi is None else f", gain over α=0 {c.gain:+.4f} [{gi[0]:+.4f}, {gi[1]:+.4f}]"
            )
            raw, alpha = (_short(a) for a in (c.raw_alpha, c.alpha))
            note = f" (guard: raw α = {raw})" if c.guarded else ""
            er.opts.echo(f"  {spec.label} on {dname}: α = {alpha}{iv}{gain}{note}")
    primary = out.choices[out.primary]
    selected = tuned.with_alphas(
        {dname: alpha_value(c.alpha, exp.alphas) for dname, c in primary.items()}
    )
    fixed = dict(exp.fusion_params)
    grid = list(dict.fromkeys([*exp.alphas, BASELINE_ALPHA, 1.0]))
    # the test curve (scoring and evaluation inside are timed by their own stages), with every
    # selector's α that is off the grid (a layer-wise α AdaMerging learnt) on its dataset
    for dname, split in er.tests.items():
        points = {alpha_label(a): a for a in grid}
        for by_ds in out.choices.values():
            if dname in by_ds:
                for label in (by_ds[dname].alpha, by_ds[dname].raw_alpha):
                    if label is not None and label not in points:
                        points[label] = alpha_value(label, exp.alphas)
        out.test_curve[dname] = {
            label: er.objective(
                split, er.fused(split.first_stage, runner.merged_ranking(a, split), fixed)
            )
            for label, a in points.items()
        }
    return out, selected
