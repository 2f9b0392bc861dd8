"""Published numbers declared beside an experiment, and their gap to a run.

A reproduction is only checked when its numbers sit next to the published ones. An
experiment's ``reported:`` block (see ``docs/registry.md``) holds the cells a paper
printed, each with its source; every run then writes ``reported.md`` with ours minus
theirs. Parsing validates against the experiment, so a typo in a triplet, row or metric
name fails ``mergeir validate`` instead of silently comparing nothing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mergekit_ir.errors import ConfigError, short_repr
from mergekit_ir.results import (
    CANDIDATE_KEYS,
    DOMAIN,
    IR,
    PRETRAINED,
    ReportedCell,
    Results,
    Row,
    as_results,
)

_MODEL_ROW = re.compile(
    rf"^({PRETRAINED}|{DOMAIN}\d*|{IR}|{'|'.join(re.escape(k) for k in CANDIDATE_KEYS)})$"
)
_ALPHA_ROW = re.compile(r"^alpha=(-?\d+(?:\.\d+)?)$")
#: The band within which a cell counts as reproduced. A chosen width, not a rounding
#: bound (three printed decimals are only ±0.0005): reruns of the same protocol move by
#: more than that with library versions, hardware, dtype and how score ties are ordered.
TOLERANCE = 0.005


@dataclass(frozen=True)
class ReportedRow:
    """One row of a published table: a dataset × row label with its metric values.

    ``row`` is a results row key (``bm25``, ``pretrained``, ``domain``, ``ir``,
    ``merged@1``, ``merged@best``) or ``alpha=<α>`` for a cell of the dev-split α
    ablation. ``triplet`` is None for rows that do not depend on the model (BM25).
    ``significant`` names the metrics whose printed value carries the paper's ``*``
    (a significant improvement over the best baseline), so our marks can be checked too.
    """

    dataset: str
    row: str
    values: Mapping[str, float]
    triplet: str | None = None
    alpha: float | None = None
    source: str = ""
    significant: tuple[str, ...] = ()


def parse_reported(
    raw: Any,
    path: str,
    *,
    triplets: Mapping[str, Sequence[str]],
    datasets: Iterable[str],
    metrics: Iterable[str],
    ablation_metric: str,
    sweep_datasets: Iterable[str] = (),
    alphas: Iterable[Any] = (),
    first_stage_row: str = "bm25",
) -> tuple[ReportedRow, ...]:
    """Validate an experiment's ``reported`` list; errors name the YAML path.

    ``triplets`` maps each of the experiment's triplets to the row keys its runs produce;
    ``first_stage_row`` is the row key of the experiment's first stage (its backend names it);
    ``sweep_datasets`` are the datasets whose dev split gets the α sweep over ``alphas``.
    A row that the experiment can never produce is an error, not a silent "–".
    """
    datasets, metrics, sweep_datasets = list(datasets), list(metrics), list(sweep_datasets)
    scalar_alphas = [
        float(a) for a in alphas if isinstance(a, int | float) and not isinstance(a, bool)
    ]
    if not isinstance(raw, list):
        raise ConfigError(
            f"{path}: give a list of rows, e.g. "
            "- {dataset: scifact, row: bm25, NDCG@10: 0.691, source: 'Table 1'}"
        )
    rows = []
    for i, item in enumerate(raw):
        where = f"{path}[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigError(f"{where}: a mapping with dataset, row, metric values and source")
        for key in ("dataset", "row"):
            if key not in item:
                raise ConfigError(f"{where}: missing '{key}'")
        dataset, row = str(item["dataset"]), str(item["row"])
        if dataset not in datasets:
            raise ConfigError(
                f"{where}.dataset: {short_repr(dataset)} is not a dataset of this experiment "
                f"({', '.join(datasets)})"
            )
        alpha_row = _ALPHA_ROW.match(row)
        if not (alpha_row or row == first_stage_row or _MODEL_ROW.match(row)):
            row_keys = (first_stage_row, PRETRAINED, DOMAIN, IR, *CANDIDATE_KEYS)
            raise ConfigError(
                f"{where}.row: unknown row {short_repr(row)} (one of {', '.join(row_keys)}, "
                "or alpha=0.7 for the dev-split α ablation)"
            )
        triplet = item.get("triplet")
        if triplet is None and row != first_stage_row:
            raise ConfigError(
                f"{where}: row {short_repr(row)} needs a 'triplet' (only {first_stage_row} rows are model-free)"
            )
        if triplet is not None and str(triplet) not in triplets:
            raise ConfigError(
                f"{where}.triplet: {short_repr(triplet)} is not a triplet of this experiment "
                f"({', '.join(triplets)})"
            )
        if triplet is not None and not alpha_row and row not in triplets[str(triplet)]:
            raise ConfigError(
                f"{where}.row: triplet {short_repr(triplet)} has no row {short_repr(row)} "
                f"(its rows: {', '.join(triplets[str(triplet)])})"
            )
        if alpha_row:
            a = float(alpha_row.group(1))
            if dataset not in sweep_datasets:
                raise ConfigError(
                    f"{where}.row: no α sweep runs on {short_repr(dataset)} in this experiment "
                    "(it needs a dev split and tuning.alpha: true)"
                )
            if not any(math.isclose(a, x, abs_tol=1e-9) for x in scalar_alphas):
                raise ConfigError(
                    f"{where}.row: α={a:g} is not in merge.alpha "
                    f"({', '.join(f'{x:g}' for x in scalar_alphas) or 'no scalar α'})"
                )
        allowed = [ablation_metric] if alpha_row else metrics
        values: dict[str, float] = {}
        for key, value in item.items():
            if key in ("dataset", "row", "triplet", "alpha", "source", "significant"):
                continue
            if str(key) not in allowed:
                raise ConfigError(
                    f"{where}.{key}: not a metric "
                    f"{'of the α ablation' if alpha_row else 'this experiment reports'} "
                    f"({', '.join(allowed)})"
                )
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise ConfigError(
                    f"{where}.{key}: {short_repr(value)} is not a number in [0, 1] (write .691 as 0.691)"
                )
            values[str(key)] = float(value)
        if not values:
            raise ConfigError(f"{where}: no metric values (e.g. NDCG@10: 0.691)")
        significant = _significant_metrics(
            item.get("significant", []), f"{where}.significant", values
        )
        alpha = item.get("alpha")
        if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, int | float)):
            raise ConfigError(
                f"{where}.alpha: {short_repr(alpha)} is not a number (the α the paper chose)"
            )
        rows.append(
            ReportedRow(
                dataset=dataset,
                row=row,
                values=values,
                triplet=None if triplet is None else str(triplet),
                alpha=None if alpha is None else float(alpha),
                source=str(item.get("source", "")),
                significant=significant,
            )
        )
    return tuple(rows)


def _significant_metrics(raw: Any, where: str, values: Mapping[str, float]) -> tuple[str, ...]:
    """The row's ``significant:`` list: metric names of this row, each at most once."""
    if not isinstance(raw, list):
        raise ConfigError(
            f"{where}: give a list of this row's metrics that the paper marks with *, "
            "e.g. significant: [NDCG@10, MAP@100]"
        )
    seen: list[str] = []
    for j, name in enumerate(raw):
        if str(name) not in values:
            raise ConfigError(
                f"{where}[{j}]: {name!r} is not a metric of this row "
                f"({', '.join(values)}); a mark needs its value"
            )
        if str(name) in seen:
            raise ConfigError(f"{where}[{j}]: {name!r} is listed twice")
        seen.append(str(name))
    return tuple(seen)


def _ablation_value(
    results: Results, triplet: str, dataset: str, alpha: float, metric: str
) -> float | None:
    abl = results.alpha_ablation.get(triplet)
    if abl is None or abl.metric != metric:
        return None
    for label, value in abl.values.get(dataset, {}).items():
        try:
            if math.isclose(float(label), alpha, abs_tol=1e-9):
                return float(value)
        except ValueError:  # layer-wise α labels are JSON, not numbers
            continue
    return None


def _section_row(results: Results, triplet: str | None, key: str) -> Row | None:
    for section in results.sections:
        if triplet is not None and section.triplet != triplet:
            continue
        row = section.row(key)
        if row is not None:
            return row
    return None


def compare(
    results: Results | Mapping[str, Any], rows: Iterable[ReportedRow]
) -> list[ReportedCell]:
    """One cell per reported value: ours, reported and ours − reported (None when not run).

    ``significant_reported`` is the paper's ``*`` on the cell, ``significant_ours`` our
    cell's ``significant`` flag (None when the cell is not in this run, and for the dev
    α ablation, which has no significance test). A model-free row (BM25) is matched
    against the first triplet section that has it, since every section carries the same
    first-stage numbers.
    """
    results = as_results(results)
    out = []
    for r in rows:
        alpha_row = _ALPHA_ROW.match(r.row)
        found = None if alpha_row else _section_row(results, r.triplet, r.row)
        label = r.row if found is None else found.label
        ours_alpha = None if found is None else found.alpha_for(r.dataset)
        for metric, reported in r.values.items():
            ours, ours_mark = None, None
            if alpha_row:
                ours = _ablation_value(
                    results, r.triplet or "", r.dataset, float(alpha_row.group(1)), metric
                )
                label = f"dev, α={float(alpha_row.group(1)):g}"
            elif found is not None:
                cell = found.cell(r.dataset, metric)
                if cell is not None:
                    ours, ours_mark = cell.mean, cell.significant
            out.append(
                ReportedCell(
                    triplet=r.triplet,
                    dataset=r.dataset,
                    row=r.row,
                    label=label,
                    metric=metric,
                    reported=reported,
                    ours=ours,
                    delta=None if ours is None else ours - reported,
                    alpha_reported=r.alpha,
                    alpha_ours=ours_alpha,
                    significant_reported=metric in r.significant,
                    significant_ours=ours_mark,
                    source=r.source,
                )
            )
    return out


def summary(cells: Iterable[ReportedCell], tolerance: float = TOLERANCE) -> str:
    """One line: how many reported cells were run and how close they came."""
    cells = list(cells)
    run = [c for c in cells if c.delta is not None]
    if not run:
        return f"{len(cells)} reported cells, none of them in this run"
    worst = max(run, key=lambda c: abs(c.delta))
    within = sum(abs(c.delta) <= tolerance + 1e-12 for c in run)
    missing = f", {len(cells) - len(run)} not in this run" if len(run) < len(cells) else ""
    where = " ".join(str(x) for x in (worst.triplet, worst.dataset, worst.row, worst.metric) if x)
    return (
        f"{len(run)} reported cells compared{missing}: {within} within ±{tolerance:g}, "
        f"largest |Δ| {abs(worst.delta):.3f} ({where})"
    )


def _where(c: ReportedCell) -> str:
    return " ".join(str(x) for x in (c.triplet, c.dataset, c.row, c.metric) if x)


def marks_summary(cells: Iterable[ReportedCell], listed: int = 8) -> str | None:
    """One line: do our ``*`` marks agree with the paper's? None when neither side has any.

    Only cells in this run are compared; the disagreements are named (the first
    ``listed`` of each kind), since a mark the paper prints and we do not is a finding.
    """
    cells = list(cells)
    run = [c for c in cells if c.significant_ours is not None]
    if not any(c.significant_reported for c in cells) and not any(c.significant_ours for c in run):
        return None
    paper_only = [c for c in run if c.significant_reported and not c.significant_ours]
    ours_only = [c for c in run if c.significant_ours and not c.significant_reported]
    both = sum(bool(c.significant_reported and c.significant_ours) for c in run)
    unrun = sum(c.significant_reported for c in cells if c.significant_ours is None)

    def named(group: list[ReportedCell]) -> str:
        shown = ", ".join(_where(c) for c in group[:listed])
        return f"{len(group)} ({shown}{', …' if len(group) > listed else ''})"

    parts = [
        f"`*` marks in this run's {len(run)} cells: paper {both + len(paper_only)}, "
        f"ours {both + len(ours_only)}, both {both}"
    ]
    if paper_only:
        parts.append(f"paper only: {named(paper_only)}")
    if ours_only:
        parts.append(f"ours only: {named(ours_only)}")
    if unrun:
        parts.append(f"{unrun} marked by the paper not in this run")
    return "; ".join(parts)
