"""The α-selector contract: how a plugin picks α for a triplet without (or with) judgments.

A selector is registered through ``register_alpha_selectors`` as an :class:`AlphaSelector`.
Its ``select(ctx, params)`` receives a :class:`SelectionContext` — the α grid, the target
corpora and unjudged test queries, the dev splits, a way to build a (pseudo-)dev split with
the experiment's own first stage, and callbacks that score a candidate α on a split with the
in-place sweep and the run cache (no reload per α) and the experiment's fusion — and returns
dataset -> :class:`AlphaChoice`. :meth:`SelectionContext.choose` turns per-query values into
a choice with the bootstrap interval and the do-no-harm guard, so every selector reports
uncertainty the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergekit_ir.evaluation.datasets import Dataset
from mergekit_ir.params import Param
from mergekit_ir.ranking import Ranking
from mergekit_ir.results import AlphaChoice, alpha_label
from mergekit_ir.tuning.bootstrap import MAX_BOOTSTRAP, argmax, bootstrap, group_curve

#: The α the guard falls back to: Θ' = ΘT (the IR model unchanged).
BASELINE_ALPHA = 0.0
#: The α a dataset keeps when a selector cannot choose for it (no dev split): the paper's
#: zero-shot α.
ZERO_SHOT_ALPHA = 1.0

#: The ``bootstrap:`` key every selector entry shares (``tuning.alpha``, ``tuning.compare[i]``):
#: resamples for the intervals, capped at :data:`~mergekit_ir.tuning.bootstrap.MAX_BOOTSTRAP`
#: (the reason is there). The registry checks it with ``BOOTSTRAP.check_scalar(value, path)``.
BOOTSTRAP = Param(
    "bootstrap",
    int,
    1000,
    "resamples for the α and gain intervals (0: none)",
    min=0,
    max=MAX_BOOTSTRAP,
)


@dataclass(frozen=True)
class AlphaSelector:
    """A named way to choose α. ``select(ctx, params)`` -> dataset -> :class:`AlphaChoice`
    (datasets it cannot choose for are left out; they keep α = 1, as without a dev split)."""

    name: str
    description: str
    select: Callable[[SelectionContext, Mapping[str, Any]], dict[str, AlphaChoice]]
    params: tuple[Param, ...] = ()
    #: True when the selector reads relevance judgments (only ``dev``): reports say so
    uses_labels: bool = False


@dataclass
class SelectionContext:
    """What a selector may use. Nothing here exposes the judged test qrels: ``corpus()``
    returns the test split with its qrels removed."""

    label: str  # how reports name this selector (name, or name:source)
    alphas: tuple[Any, ...]
    objective: str
    datasets: tuple[str, ...]
    seed: int
    guard: bool
    samples: int
    confidence: float
    transfer: bool  # tuning.transfer: a dev α also serves datasets without a dev split
    cache_dir: Path
    corpus: Callable[[str], Dataset]  # unjudged test split (corpus + queries, qrels empty)
    dev: Callable[[str], Any | None]  # the dev split (a Split), None without one
    make_split: Callable[[Dataset, str], Any]  # a Split with the experiment's first stage
    ranking: Callable[[Any, Any], Ranking]  # Θ'(α) re-ranking fused with the first stage
    score: Callable[[Any, Any], dict[str, float]]  # per-query objective on a split's qrels
    echo: Callable[[str], None] = print
    extra: dict[str, Any] = field(default_factory=dict)
    #: the triplet's live ΘT scorer and merge slots (a
    #: :class:`mergekit_ir.tuning.adamerging.MergeAccess`), for selectors that learn through
    #: the weights (``adamerging``); None where the host offers none
    merge_access: Callable[[], Any] | None = None

    def __post_init__(self) -> None:
        # the registry checks the key with its YAML path; this holds for contexts built in code
        BOOTSTRAP.check_scalar(self.samples, f"selector {self.label}: bootstrap")

    @property
    def labels(self) -> list[str]:
        return [alpha_label(a) for a in self.alphas]

    def sweep(self, split: Any) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
        """Per-query objective on ``split`` for every α in the grid, and at α = 0."""
        values = {alpha_label(a): self.score(a, split) for a in self.alphas}
        base = values.get(alpha_label(BASELINE_ALPHA)) or self.score(BASELINE_ALPHA, split)
        return values, base

    def choose(
        self,
        values: Mapping[str, Mapping[str, Mapping[str, float]]],
        baseline: Mapping[str, Mapping[str, float]],
        diagnostics: Mapping[str, Any] | None = None,
    ) -> AlphaChoice:
        """The grid's best α on ``values`` (group -> α label -> qid -> score; the curve is the
        mean of group means, ties to the earlier α), its bootstrap interval, its gain over
        α = 0, and with ``guard`` α = 0 unless the gain's lower bound is above zero."""
        order = self.labels
        curve = group_curve(values, order)
        raw = argmax(curve, order)
        scalar = {
            lb: float(a)
            for lb, a in zip(order, self.alphas, strict=True)
            if isinstance(a, int | float) and not isinstance(a, bool)
        }
        boot = bootstrap(
            values,
            baseline,
            order,
            raw,
            scalar,
            samples=self.samples,
            confidence=self.confidence,
            seed=self.seed,
        )
        guarded = self.guard and not boot.gain_interval[0] > 0
        return AlphaChoice(
            selector=self.label,
            alpha=alpha_label(BASELINE_ALPHA) if guarded else raw,
            curve={a: round(v, 6) for a, v in curve.items()},
            interval=tuple(round(x, 6) for x in boot.alpha_interval),
            gain=round(boot.gain, 6),
            gain_interval=tuple(round(x, 6) for x in boot.gain_interval),
            guarded=guarded,
            raw_alpha=raw,
            stability=round(boot.stability, 6),
            diagnostics=dict(diagnostics or {}),
        )


def alpha_value(label: str, alphas: tuple[Any, ...]) -> Any:
    """The α (as swept) a label names; α = 0 when it is the guard's fallback, α = 1 when it is
    the zero-shot α of a dataset without a dev split (either may be off the grid)."""
    for a in alphas:
        if alpha_label(a) == label:
            return a
    for fallback in (BASELINE_ALPHA, ZERO_SHOT_ALPHA):
        if label == alpha_label(fallback):
            return fallback
    learned = _layer_wise(label)  # off the grid: a layer-wise α a selector learnt (adamerging)
    if learned is not None:
        return learned
    raise KeyError(label)


def _layer_wise(label: str) -> list[dict[str, Any]] | None:
    """The layer-wise α (filter rules) an α label spells, else None."""
    import json

    try:
        value = json.loads(label)
    except ValueError:
        return None
    rules = isinstance(value, list) and all(isinstance(r, dict) and "value" in r for r in value)
    if rules and value:
        return value
    return None
