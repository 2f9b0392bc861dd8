"""An experiment's published cells (its ``reported:`` block) as Markdown tables.

``docs/reproduce.md`` shows the paper's tables; printing them from the registry rather than
retyping them means the page and the numbers every run is compared with cannot disagree
(``mergeir reported EXPERIMENT``). Test-split rows become one table per dataset (rows
as declared, ``*`` where the paper marks a cell); ``alpha=<α>`` rows become one table of
α × (triplet, dev split), like the run's ``alpha.md``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from mergekit_ir.reports.reported import ReportedRow

_DASH = "–"
_LABELS = {
    "bm25": "BM25",
    "pretrained": "Θ0",
    "domain": "ΘD",
    "ir": "ΘT",
    "merged@1": "Θ' (α=1)",
}
_ALPHA_ROW = re.compile(r"^alpha=(-?\d+(?:\.\d+)?)$")


def sweep_alpha(row: ReportedRow) -> float | None:
    """The α of an ``alpha=<α>`` (dev-split ablation) row; None for a test-split row."""
    m = _ALPHA_ROW.match(row.row)
    return None if m is None else float(m.group(1))


def row_label(row: ReportedRow) -> str:
    """The paper's name for a row: Θ0, ΘD, ΘT, Θ' (α=1), Θ' (α=<the tuned α>)."""
    if row.row == "merged@best":
        return "Θ' (tuned α)" if row.alpha is None else f"Θ' (α={row.alpha:g})"
    if row.row.startswith("domain") and row.row != "domain":
        return f"ΘD{row.row.removeprefix('domain')}"
    return _LABELS.get(row.row, row.row)


def _value(row: ReportedRow, metric: str) -> str:
    if metric not in row.values:
        return _DASH
    v = row.values[metric]
    shown = f"{v:.3f}" if round(v, 3) == v else f"{v:.4f}"
    return shown + ("\\*" if metric in row.significant else "")


def _sources(rows: Sequence[ReportedRow]) -> str:
    return "; ".join(dict.fromkeys(r.source for r in rows if r.source)) or "not given"


def _test_tables(rows: Sequence[ReportedRow], metrics: Sequence[str]) -> list[str]:
    out: list[str] = []
    for dataset in dict.fromkeys(r.dataset for r in rows):
        block = [r for r in rows if r.dataset == dataset]
        used = [m for m in metrics if any(m in r.values for r in block)]
        out += [
            f"**{dataset}** (source: {_sources(block)})",
            "",
            "| model | row | " + " | ".join(used) + " |",
            "|:---|:---|" + "---:|" * len(used),
        ]
        out += [
            f"| {r.triplet or _DASH} | {row_label(r)} | "
            + " | ".join(_value(r, m) for m in used)
            + " |"
            for r in block
        ]
        out.append("")
    return out


def _alpha_tables(rows: Sequence[ReportedRow]) -> list[str]:
    out: list[str] = []
    for metric in dict.fromkeys(m for r in rows for m in r.values):
        block = [r for r in rows if metric in r.values]
        columns = list(dict.fromkeys((r.triplet or "", r.dataset) for r in block))
        cell = {(r.triplet or "", r.dataset, sweep_alpha(r)): r for r in block}
        alphas = sorted({a for *_, a in cell if a is not None})
        out += [
            f"**{metric} on the dev splits for each α** (source: {_sources(block)})",
            "",
            "| α | " + " | ".join(f"{t} / {d}" for t, d in columns) + " |",
            "|:---|" + "---:|" * len(columns),
        ]
        for a in alphas:
            shown = [
                _value(cell[t, d, a], metric) if (t, d, a) in cell else _DASH for t, d in columns
            ]
            out.append(f"| {a:g} | " + " | ".join(shown) + " |")
        out.append("")
    return out


def render_published(name: str, rows: Sequence[ReportedRow], metrics: Sequence[str]) -> str:
    """Markdown for experiment ``name``'s published ``rows`` (``metrics`` gives column order)."""
    test = [r for r in rows if sweep_alpha(r) is None]
    sweep = [r for r in rows if sweep_alpha(r) is not None]
    cells = sum(len(r.values) for r in rows)
    lines = [
        f"`{name}`: {len(rows)} published rows, {cells} cells. `*`: significant improvement "
        "over the best baseline, as printed; `–`: no published value.",
        "",
    ]
    lines += _test_tables(test, metrics) + _alpha_tables(sweep)
    return "\n".join(lines).rstrip("\n") + "\n"
