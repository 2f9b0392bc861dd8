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

ROW_KEYS = ("bm25", "pretrained", "domain", "ir", "merged@1", "merged@best")
_ROW = re.compile(r"^(bm25|pretrained|domain\d*|ir|merged@1|merged@best)$")
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
    """

    dataset: str
    row: str
    values: Mapping[str, float]
    triplet: str | None = None
    alpha: float | None = None
    source: str = ""


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
) -> tuple[ReportedRow, ...]:
    """Validate an experiment's ``reported`` list; errors name the YAML path.

    ``triplets`` maps each of the experiment's triplets to the row keys its runs produce;
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
        if not (alpha_row or _ROW.match(row)):
            raise ConfigError(
                f"{where}.row: unknown row {short_repr(row)} (one of {', '.join(ROW_KEYS)}, "
                "or alpha=0.7 for the dev-split α ablation)"
            )
        triplet = item.get("triplet")
        if triplet is None and row != "bm25":
            raise ConfigError(
                f"{where}: row {short_repr(row)} needs a 'triplet' (only bm25 rows are model-free)"
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
            if key in ("dataset", "row", "triplet", "alpha", "source"):
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
            )
        )
    return tuple(rows)


def _ablation_value(
    results: Mapping[str, Any], triplet: str, dataset: str, alpha: float, metric: str
) -> float | None:
    abl = (results.get("alpha_ablation") or {}).get(triplet) or {}
    if abl.get("metric") != metric:
        return None
    for label, value in ((abl.get("values") or {}).get(dataset) or {}).items():
        try:
            if math.isclose(float(label), alpha, abs_tol=1e-9):
                return float(value)
        except ValueError:  # layer-wise α labels are JSON, not numbers
            continue
    return None


def _section_row(
    results: Mapping[str, Any], triplet: str | None, key: str
) -> tuple[str, Mapping] | None:
    for section in results.get("sections", []):
        if triplet is not None and section.get("triplet") != triplet:
            continue
        for row in section.get("rows", []):
            if row.get("key") == key:
                return str(section.get("triplet", "")), row
    return None


def compare(results: Mapping[str, Any], rows: Iterable[ReportedRow]) -> list[dict[str, Any]]:
    """One entry per reported cell: ours, reported and ours − reported (None when not run).

    A model-free row (BM25) is matched against the first triplet section that has it, since
    every section carries the same BM25 numbers.
    """
    out = []
    for r in rows:
        alpha_row = _ALPHA_ROW.match(r.row)
        found = None if alpha_row else _section_row(results, r.triplet, r.row)
        label = r.row
        ours_alpha = None
        if found is not None:
            label = str(found[1].get("label", r.row))
            a = found[1].get("alpha")
            ours_alpha = a.get(r.dataset) if isinstance(a, Mapping) else a
        for metric, reported in r.values.items():
            ours = None
            if alpha_row:
                ours = _ablation_value(
                    results, r.triplet or "", r.dataset, float(alpha_row.group(1)), metric
                )
                label = f"dev, α={float(alpha_row.group(1)):g}"
            elif found is not None:
                cell = found[1].get("cells", {}).get(r.dataset, {}).get(metric)
                if isinstance(cell, Mapping) and cell.get("mean") is not None:
                    ours = float(cell["mean"])
            out.append(
                {
                    "triplet": r.triplet,
                    "dataset": r.dataset,
                    "row": r.row,
                    "label": label,
                    "metric": metric,
                    "reported": reported,
                    "ours": ours,
                    "delta": None if ours is None else ours - reported,
                    "alpha_reported": r.alpha,
                    "alpha_ours": ours_alpha,
                    "source": r.source,
                }
            )
    return out


def summary(cells: Iterable[Mapping[str, Any]], tolerance: float = TOLERANCE) -> str:
    """One line: how many reported cells were run and how close they came."""
    cells = list(cells)
    run = [c for c in cells if c.get("delta") is not None]
    if not run:
        return f"{len(cells)} reported cells, none of them in this run"
    worst = max(run, key=lambda c: abs(c["delta"]))
    within = sum(abs(c["delta"]) <= tolerance + 1e-12 for c in run)
    missing = f", {len(cells) - len(run)} not in this run" if len(run) < len(cells) else ""
    where = " ".join(
        str(x) for x in (worst["triplet"], worst["dataset"], worst["row"], worst["metric"]) if x
    )
    return (
        f"{len(run)} reported cells compared{missing}: {within} within ±{tolerance:g}, "
        f"largest |Δ| {abs(worst['delta']):.3f} ({where})"
    )
