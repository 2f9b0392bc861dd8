"""The typed results of an experiment: what the runner produces and every report reads.

``results.json`` is :meth:`Results.to_json` and ``mergeir report`` reads it back with
:meth:`Results.from_json`, so a run and a re-render see the same object. Readers are
tolerant (missing keys take defaults) because hand-written and older results files
must still render; writers emit exactly the documented shape (``docs/reports.md``).

The row keys live here too, the one list that the runner, the registry's ``reported:``
validation and the reports share.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Row keys of the model rows, in table order (the first-stage row comes first and is named
#: by its backend; ΘD rows are ``domain`` or ``domain1``, ``domain2``… for several).
PRETRAINED, DOMAIN, IR = "pretrained", "domain", "ir"
MERGED_AT_1, MERGED_BEST = "merged@1", "merged@best"
CANDIDATE_KEYS = (MERGED_AT_1, MERGED_BEST)
#: The row labels the tables print; ``merged@best`` is labelled by the α it used.
ROW_LABELS = {PRETRAINED: "Θ0", DOMAIN: "ΘD", IR: "ΘT", MERGED_AT_1: "Θ' (α=1)"}
_DOMAIN_N = re.compile(r"^domain(\d+)$")


def domain_row_keys(n: int) -> tuple[str, ...]:
    """Row keys of ``n`` ΘD checkpoints run alone."""
    if n == 0:
        return ()
    return (DOMAIN,) if n == 1 else tuple(f"{DOMAIN}{i + 1}" for i in range(n))


def model_row_keys(has_pretrained: bool, n_domain_checkpoints: int) -> tuple[str, ...]:
    """Every model row a triplet produces, in table order (the first-stage row not included)."""
    return (
        *((PRETRAINED,) if has_pretrained else ()),
        *domain_row_keys(n_domain_checkpoints),
        IR,
        *CANDIDATE_KEYS,
    )


def row_label(key: str) -> str:
    """The printed label of a model row key (``domain2`` -> ``ΘD2``)."""
    m = _DOMAIN_N.match(key)
    return f"ΘD{m.group(1)}" if m else ROW_LABELS.get(key, key)


def alpha_display(label: str) -> str:
    """How a human reads an α label: ``0.3``; ``gradient 0.2 → 0.8``; ``attention: 0.3; else 1``.

    Layer-wise α are stored as sorted JSON (:func:`alpha_label`, a stable key); this is the
    form reports print, without the ``filter: ""`` the parser adds to a catch-all rule.
    """
    import json

    try:
        value = json.loads(label)
    except ValueError:
        return label
    if isinstance(value, dict) and GRID in value:
        return ", ".join(
            f"{'α' if k == 'alpha' else k}={alpha_display(alpha_label(v))}"
            for k, v in value[GRID].items()
        )
    if isinstance(value, dict) and "gradient" in value:
        return "gradient " + " → ".join(f"{v:g}" for v in value["gradient"])
    if isinstance(value, list) and all(isinstance(r, dict) for r in value):
        return "; ".join(
            f"{r.get('filter') or 'else'}: {r['value']:g}"
            if isinstance(r.get("value"), int | float)
            else f"{r.get('filter') or 'else'}: {r.get('value')}"
            for r in value
        )
    return label


#: The key of a grid point: a merge parameter setting beyond α, swept like α
#: (``merge: {alpha: [0.5, 1], density: [0.3, 0.7]}``) — ``{"grid": {"alpha": …, "density": …}}``.
#: It travels where an α travels (the sweep, the cache key, the ablation, the tuned row).
GRID = "grid"


def grid_point(params: dict[str, Any]) -> dict[str, Any]:
    """A grid point: ``alpha`` first, then the other swept parameters in the YAML's order."""
    return {GRID: dict(params)}


def point_params(alpha: Any) -> dict[str, Any]:
    """The merge parameters an α or a grid point sets (what the sweep and a merge apply)."""
    if isinstance(alpha, dict) and GRID in alpha:
        return dict(alpha[GRID])
    return {"alpha": alpha}


def is_grid_point(alpha: Any) -> bool:
    return isinstance(alpha, dict) and GRID in alpha


def alpha_label(alpha: Any) -> str:
    """How an α is written in results: ``0.3`` for a scalar, sorted JSON for a layer-wise α."""
    import json

    if isinstance(alpha, int | float) and not isinstance(alpha, bool):
        return f"{alpha:g}"
    return json.dumps(alpha, sort_keys=True)


@dataclass
class Cell:
    """One metric of one row on one dataset: the mean, per-query scores and the significance mark."""

    mean: float
    per_query: dict[str, float] = field(default_factory=dict)
    significant: bool = False
    p_value: float | None = None
    compared_to: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mean": self.mean,
            "per_query": self.per_query,
            "significant": self.significant,
        }
        if self.p_value is not None:
            out["p_value"] = self.p_value
        if self.compared_to is not None:
            out["compared_to"] = self.compared_to
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Cell | None:
        if not isinstance(raw, Mapping) or raw.get("mean") is None:
            return None
        return cls(
            mean=float(raw["mean"]),
            per_query=dict(raw.get("per_query") or {}),
            significant=bool(raw.get("significant", False)),
            p_value=None if raw.get("p_value") is None else float(raw["p_value"]),
            compared_to=raw.get("compared_to"),
        )


@dataclass
class Row:
    """One row of a triplet's table: a baseline or a merged model, fused with the first stage.

    ``alpha`` is None for baselines, a number for ``merged@1`` and dataset -> α label for
    ``merged@best``; ``unfused`` holds the model's own means before fusion.
    """

    key: str
    label: str
    kind: str = "baseline"  # baseline | merged
    alpha: float | dict[str, str] | None = None
    cells: dict[str, dict[str, Cell]] = field(default_factory=dict)
    unfused: dict[str, dict[str, float]] | None = None

    def cell(self, dataset: str, metric: str) -> Cell | None:
        return self.cells.get(dataset, {}).get(metric)

    def mean(self, dataset: str, metric: str) -> float | None:
        c = self.cell(dataset, metric)
        return None if c is None else c.mean

    def alpha_for(self, dataset: str) -> Any:
        """The α this row used on ``dataset`` (None for baselines)."""
        return self.alpha.get(dataset) if isinstance(self.alpha, Mapping) else self.alpha

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "key": self.key,
            "label": self.label,
            "kind": self.kind,
            "alpha": self.alpha,
            "cells": {d: {m: c.to_json() for m, c in ms.items()} for d, ms in self.cells.items()},
        }
        if self.unfused is not None:
            out["unfused"] = self.unfused
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Row:
        cells: dict[str, dict[str, Cell]] = {}
        for ds, metrics in (raw.get("cells") or {}).items():
            for m, c in (metrics or {}).items():
                cell = Cell.from_json(c)
                if cell is not None:
                    cells.setdefault(str(ds), {})[str(m)] = cell
        key = str(raw.get("key", ""))
        return cls(
            key=key,
            label=str(raw.get("label", key)),
            kind=str(raw.get("kind", "baseline")),
            alpha=raw.get("alpha"),
            cells=cells,
            unfused=raw.get("unfused"),
        )


@dataclass
class SignificanceSettings:
    """How the ``*`` marks were decided, for the report legend."""

    test: str = "student"
    max_p: float = 0.01
    correction: str = "bonferroni"
    comparisons: int | None = None
    family: str = "section x dataset x metric: candidates vs best baseline"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "test": self.test,
            "max_p": self.max_p,
            "correction": self.correction,
            "family": self.family,
        }
        if self.comparisons is not None:
            out["comparisons"] = self.comparisons
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None) -> SignificanceSettings | None:
        if not raw:
            return None
        return cls(
            test=str(raw.get("test", "student")),
            max_p=float(raw.get("max_p", 0.01)),
            correction=str(raw.get("correction", "bonferroni")),
            comparisons=raw.get("comparisons"),
            family=str(raw.get("family", cls.family)),
        )


#: What the verdicts compare the merged rows with (``significance: {against: [...]}``).
AGAINST = ("theta_t", "best_baseline")


@dataclass(frozen=True)
class Verdict:
    """The answer to "did merging help?" for one merged row, reference, dataset and metric:
    the difference of means, the paired test's p-value and what it means at the threshold."""

    candidate: str  # row key: merged@best or merged@1
    reference: str  # row key of what it is compared with (ir, bm25, …)
    against: str  # theta_t | best_baseline (how the reference was chosen)
    dataset: str
    metric: str
    candidate_mean: float
    reference_mean: float
    p_value: float
    threshold: float  # max_p after the correction
    test: str = "student"

    @property
    def delta(self) -> float:
        return self.candidate_mean - self.reference_mean

    @property
    def outcome(self) -> str:
        """``better``, ``worse`` or ``no significant difference`` (at :attr:`threshold`)."""
        if self.p_value < self.threshold and self.delta != 0:
            return "better" if self.delta > 0 else "worse"
        return "no significant difference"

    def sentence(self, candidate_label: str, reference_label: str) -> str:
        p = f"p = {self.p_value:.3g}"
        if self.outcome == "no significant difference":
            return (
                f"{candidate_label} vs {reference_label} on {self.metric}: no significant "
                f"difference ({self.delta:+.3f}, {p}, threshold {self.threshold:.3g})"
            )
        return (
            f"{candidate_label} is {self.outcome} than {reference_label} on {self.metric} by "
            f"{abs(self.delta):.3f}, {p}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate,
            "reference": self.reference,
            "against": self.against,
            "dataset": self.dataset,
            "metric": self.metric,
            "candidate_mean": self.candidate_mean,
            "reference_mean": self.reference_mean,
            "delta": self.delta,
            "p_value": self.p_value,
            "threshold": self.threshold,
            "test": self.test,
            "outcome": self.outcome,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Verdict:
        return cls(
            candidate=str(raw["candidate"]),
            reference=str(raw["reference"]),
            against=str(raw.get("against", "best_baseline")),
            dataset=str(raw["dataset"]),
            metric=str(raw["metric"]),
            candidate_mean=float(raw["candidate_mean"]),
            reference_mean=float(raw["reference_mean"]),
            p_value=float(raw["p_value"]),
            threshold=float(raw["threshold"]),
            test=str(raw.get("test", "student")),
        )


@dataclass
class Section:
    """One triplet's block of rows."""

    triplet: str
    rows: list[Row] = field(default_factory=list)
    significance: SignificanceSettings | None = None
    #: what the scorers warned about (e.g. a randomly initialised head): rows to read with care
    notes: list[str] = field(default_factory=list)
    #: dataset -> the exact α the Θ'(tuned α) row used (rows carry labels, which round)
    tuned_alpha: dict[str, Any] = field(default_factory=dict)
    #: "did merging help?": each merged row against ΘT and the best baseline (see Verdict)
    verdicts: list[Verdict] = field(default_factory=list)

    def row(self, key: str) -> Row | None:
        return next((r for r in self.rows if r.key == key), None)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"triplet": self.triplet, "rows": [r.to_json() for r in self.rows]}
        if self.significance is not None:
            out["significance"] = self.significance.to_json()
        if self.notes:
            out["notes"] = list(self.notes)
        if self.tuned_alpha:
            out["tuned_alpha"] = dict(self.tuned_alpha)
        if self.verdicts:
            out["verdicts"] = [v.to_json() for v in self.verdicts]
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Section:
        return cls(
            triplet=str(raw.get("triplet", "")),
            rows=[Row.from_json(r) for r in raw.get("rows") or []],
            significance=SignificanceSettings.from_json(raw.get("significance")),
            notes=[str(n) for n in raw.get("notes") or []],
            tuned_alpha={str(d): a for d, a in (raw.get("tuned_alpha") or {}).items()},
            verdicts=[Verdict.from_json(v) for v in raw.get("verdicts") or []],
        )


@dataclass
class AlphaAblation:
    """The α sweep of one triplet: the objective per dev split and α, and the α chosen."""

    metric: str = "NDCG@10"
    split: str = "dev"
    values: dict[str, dict[str, float]] = field(default_factory=dict)  # dataset -> α -> value
    mean: dict[str, float] = field(default_factory=dict)  # α -> mean over datasets
    best: str | None = None
    #: the α labels in the grid's (the YAML's) order; results.json sorts mapping keys
    order: list[str] = field(default_factory=list)
    #: dataset -> reference line -> value on the same split ("BM25": first stage alone, "ΘT")
    references: dict[str, dict[str, float]] = field(default_factory=dict)
    #: the search trace when ``tuning.search`` is not the full grid
    #: (:meth:`mergekit_ir.tuning.search.SearchResult.to_json`); ``values`` then holds only the
    #: points scored on every dev query
    search: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out = {
            "metric": self.metric,
            "split": self.split,
            "values": self.values,
            "mean": self.mean,
            "best": self.best,
            "order": self.order,
            "references": self.references,
        }
        if self.search is not None:
            out["search"] = self.search
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> AlphaAblation:
        return cls(
            metric=str(raw.get("metric", "NDCG@10")),
            split=str(raw.get("split", "dev")),
            values={
                str(d): {str(a): float(v) for a, v in (vals or {}).items()}
                for d, vals in (raw.get("values") or {}).items()
            },
            mean={str(a): float(v) for a, v in (raw.get("mean") or {}).items()},
            best=None if raw.get("best") is None else str(raw["best"]),
            order=[str(a) for a in raw.get("order") or []],
            references={
                str(d): {str(k): float(v) for k, v in (refs or {}).items()}
                for d, refs in (raw.get("references") or {}).items()
            },
            search=dict(raw["search"]) if isinstance(raw.get("search"), Mapping) else None,
        )


def _pair(raw: Any) -> tuple[float, float] | None:
    if not isinstance(raw, list | tuple) or len(raw) != 2 or None in raw:
        return None
    return (float(raw[0]), float(raw[1]))


@dataclass(frozen=True)
class TunedAlpha:
    """The α each dataset's Θ'(tuned α) row uses, and the sweep it came from (None: not tuned).

    Frozen: a step that changes the choice (an α selector) returns a new value with
    :meth:`with_alphas`, so no later step sees an α changed behind its back."""

    per_dataset: Mapping[str, Any]
    ablation: AlphaAblation | None = None

    def with_alphas(self, alphas: Mapping[str, Any]) -> TunedAlpha:
        """The same sweep with ``alphas`` replacing the chosen α of those datasets."""
        return TunedAlpha({**self.per_dataset, **alphas}, self.ablation)


@dataclass
class AlphaChoice:
    """What an α selector chose on one dataset, with its evidence.

    ``curve`` is the selector's own objective per α label (pseudo-dev NDCG, agreement...);
    ``interval`` the bootstrap percentile interval of the chosen α; ``gain`` and
    ``gain_interval`` its gain over α = 0 (ΘT) on the selector's objective; ``guarded``
    says the do-no-harm guard replaced ``raw_alpha`` by α = 0.
    """

    selector: str
    alpha: str
    curve: dict[str, float] = field(default_factory=dict)
    interval: tuple[float, float] | None = None
    gain: float | None = None
    gain_interval: tuple[float, float] | None = None
    guarded: bool = False
    raw_alpha: str | None = None
    stability: float | None = None
    diagnostics: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "selector": self.selector,
            "alpha": self.alpha,
            "curve": self.curve,
            "interval": None if self.interval is None else list(self.interval),
            "gain": self.gain,
            "gain_interval": None if self.gain_interval is None else list(self.gain_interval),
            "guarded": self.guarded,
            "raw_alpha": self.raw_alpha,
            "stability": self.stability,
            "diagnostics": self.diagnostics,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> AlphaChoice:
        return cls(
            selector=str(raw.get("selector", "")),
            alpha=str(raw.get("alpha", "")),
            curve={str(a): float(v) for a, v in (raw.get("curve") or {}).items()},
            interval=_pair(raw.get("interval")),
            gain=None if raw.get("gain") is None else float(raw["gain"]),
            gain_interval=_pair(raw.get("gain_interval")),
            guarded=bool(raw.get("guarded", False)),
            raw_alpha=None if raw.get("raw_alpha") is None else str(raw["raw_alpha"]),
            stability=None if raw.get("stability") is None else float(raw["stability"]),
            diagnostics=dict(raw.get("diagnostics") or {}),
        )


@dataclass
class AlphaSelection:
    """One triplet's α selection: every selector's choice per dataset and the test curve.

    ``primary`` is the selector whose α the Θ'(tuned α) row used; ``test_curve`` is the test
    objective per dataset and α (an oracle: what no label-free user has), ``dev_alpha`` the
    dev-tuned α per dataset where there is a dev split.
    """

    primary: str = "dev"
    metric: str = "NDCG@10"
    choices: dict[str, dict[str, AlphaChoice]] = field(default_factory=dict)  # selector -> ds
    test_curve: dict[str, dict[str, float]] = field(default_factory=dict)  # ds -> α -> value
    dev_alpha: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "primary": self.primary,
            "metric": self.metric,
            "choices": {
                s: {d: c.to_json() for d, c in by_ds.items()} for s, by_ds in self.choices.items()
            },
            "test_curve": self.test_curve,
            "dev_alpha": self.dev_alpha,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> AlphaSelection:
        return cls(
            primary=str(raw.get("primary", "dev")),
            metric=str(raw.get("metric", "NDCG@10")),
            choices={
                str(s): {str(d): AlphaChoice.from_json(c) for d, c in (by_ds or {}).items()}
                for s, by_ds in (raw.get("choices") or {}).items()
            },
            test_curve={
                str(d): {str(a): float(v) for a, v in (c or {}).items()}
                for d, c in (raw.get("test_curve") or {}).items()
            },
            dev_alpha={str(d): str(a) for d, a in (raw.get("dev_alpha") or {}).items()},
        )


@dataclass
class ReportedCell:
    """One published cell next to ours (``reported.md``); ``ours``/``delta`` None when not run."""

    dataset: str
    row: str
    label: str
    metric: str
    reported: float
    ours: float | None = None
    delta: float | None = None
    triplet: str | None = None
    alpha_reported: float | None = None
    alpha_ours: Any = None
    source: str = ""
    #: the paper's ``*`` on this cell; ours: the run's ``significant`` flag (None: not run,
    #: or a dev α-ablation cell, which has no significance test)
    significant_reported: bool = False
    significant_ours: bool | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "triplet": self.triplet,
            "dataset": self.dataset,
            "row": self.row,
            "label": self.label,
            "metric": self.metric,
            "reported": self.reported,
            "ours": self.ours,
            "delta": self.delta,
            "alpha_reported": self.alpha_reported,
            "alpha_ours": self.alpha_ours,
            "significant_reported": self.significant_reported,
            "significant_ours": self.significant_ours,
            "source": self.source,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> ReportedCell:
        return cls(
            dataset=str(raw["dataset"]),
            row=str(raw.get("row", "")),
            label=str(raw.get("label") or raw.get("row", "")),
            metric=str(raw["metric"]),
            reported=float(raw["reported"]),
            ours=None if raw.get("ours") is None else float(raw["ours"]),
            delta=None if raw.get("delta") is None else float(raw["delta"]),
            triplet=raw.get("triplet"),
            alpha_reported=raw.get("alpha_reported"),
            alpha_ours=raw.get("alpha_ours"),
            source=str(raw.get("source", "")),
            significant_reported=bool(raw.get("significant_reported", False)),
            significant_ours=(
                None if raw.get("significant_ours") is None else bool(raw["significant_ours"])
            ),
        )


@dataclass
class Results:
    """Everything a finished run knows; ``results.json`` is its :meth:`to_json`.

    ``fusion`` is triplet -> row key -> dataset -> the fusion parameters used (λ);
    ``manifest`` is the run's provenance (see :func:`mergekit_ir.experiments.manifest`).
    """

    experiment: str = ""
    metrics: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
    alpha_ablation: dict[str, AlphaAblation] = field(default_factory=dict)
    fusion: dict[str, dict[str, dict[str, dict[str, Any]]]] = field(default_factory=dict)
    reported: list[ReportedCell] = field(default_factory=list)
    manifest: dict[str, Any] | None = None
    significance: SignificanceSettings | None = None
    alpha_selection: dict[str, AlphaSelection] = field(default_factory=dict)  # triplet -> it

    def section(self, triplet: str) -> Section | None:
        return next((s for s in self.sections if s.triplet == triplet), None)

    def all_datasets(self) -> list[str]:
        """The declared datasets, else every dataset a cell mentions (in first-seen order)."""
        if self.datasets:
            return list(self.datasets)
        seen: dict[str, None] = {}
        for s in self.sections:
            for r in s.rows:
                seen.update(dict.fromkeys(r.cells))
        return list(seen)

    def legend_significance(self) -> SignificanceSettings:
        return (
            self.significance
            or next((s.significance for s in self.sections if s.significance), None)
            or SignificanceSettings()
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "experiment": self.experiment,
            "metrics": list(self.metrics),
            "datasets": list(self.datasets),
            "sections": [s.to_json() for s in self.sections],
            "alpha_ablation": {t: a.to_json() for t, a in self.alpha_ablation.items()},
            "fusion": self.fusion,
        }
        if self.reported:
            out["reported"] = [c.to_json() for c in self.reported]
        if self.manifest is not None:
            out["manifest"] = self.manifest
        if self.significance is not None:
            out["significance"] = self.significance.to_json()
        if self.alpha_selection:
            out["alpha_selection"] = {t: a.to_json() for t, a in self.alpha_selection.items()}
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Results:
        """Read a results mapping (``results.json``, or a hand-made one); unknown keys are ignored."""
        return cls(
            experiment=str(raw.get("experiment", "")),
            metrics=[str(m) for m in raw.get("metrics") or []],
            datasets=[str(d) for d in raw.get("datasets") or []],
            sections=[Section.from_json(s) for s in raw.get("sections") or []],
            alpha_ablation={
                str(t): AlphaAblation.from_json(a)
                for t, a in (raw.get("alpha_ablation") or {}).items()
            },
            fusion=dict(raw.get("fusion") or {}),
            reported=[
                c if isinstance(c, ReportedCell) else ReportedCell.from_json(c)
                for c in raw.get("reported") or []
            ],
            manifest=raw.get("manifest"),
            significance=SignificanceSettings.from_json(raw.get("significance")),
            alpha_selection={
                str(t): AlphaSelection.from_json(a)
                for t, a in (raw.get("alpha_selection") or {}).items()
            },
        )


def as_results(results: Results | Mapping[str, Any]) -> Results:
    """Accept a :class:`Results` or its JSON form (what ``results.json`` holds)."""
    return results if isinstance(results, Results) else Results.from_json(results)


def json_kind(value: Any) -> str:
    """How JSON calls a parsed value's type (for messages about a user's file)."""
    kinds = {type(None): "null", bool: "a boolean", list: "a list", str: "a string"}
    return kinds.get(type(value), "a number" if isinstance(value, int | float) else "an object")


def load_results(run_dir: str | Path) -> Results:
    """A finished run's :class:`Results`; a results.json of the wrong shape (a list, null,
    fields of the wrong type) is one line naming the file, never a traceback."""
    from mergekit_ir.errors import ConfigError

    raw = read_results_json(run_dir)
    path = Path(run_dir) / "results.json"
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"{path}: holds {json_kind(raw)}, not a run's results (a JSON object); "
            "rerun the experiment"
        )
    try:
        return Results.from_json(raw)
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise ConfigError(
            f"{path}: not a run's results ({type(exc).__name__}: {exc}); rerun the experiment"
        ) from None


def read_results_json(run_dir: str | Path) -> Any:
    """The parsed ``results.json`` of a finished run; a missing or broken file is one line."""
    import json

    from mergekit_ir.errors import ConfigError

    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise ConfigError(
            f"{path}: not found (no results.json); is {run_dir} the --out folder of a finished "
            "`mergeir run`?"
        )
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{path}: unreadable or not valid JSON ({exc}); rerun the experiment"
        ) from None
