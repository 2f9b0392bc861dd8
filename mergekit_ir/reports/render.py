"""Render :class:`~mergekit_ir.results.Results` as the paper's tables (Markdown, LaTeX, CSV) and the α plot.

Numbers are shown with three decimals in ``0.691`` style (the paper prints ``.691``;
a leading zero is easier to read and to parse). Within each triplet section the
best value of every column is bold (every row that ties at three decimals), and a
``*`` marks a cell whose ``significant`` flag is set (see
:mod:`mergekit_ir.evaluation.significance`). Output bytes depend only on the input, so reruns
diff cleanly.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergekit_ir.reports.reported import TOLERANCE, marks_summary, summary
from mergekit_ir.reports.selection import (
    coefficients_png,
    render_selection,
    selection_notes,
    selection_png,
)
from mergekit_ir.reports.verdicts import render_verdicts_latex, render_verdicts_markdown
from mergekit_ir.results import (
    MERGED_AT_1,
    MERGED_BEST,
    Results,
    Row,
    Section,
    alpha_display,
    alpha_label,
    as_results,
)
from mergekit_ir.storage import atomic

ResultsLike = Results | Mapping[str, Any]

_DASH = "–"
_PNG_DPI = 100


def _fmt(v: float) -> str:
    return f"{float(v):.3f}"


def _best_of(values: Any) -> str | None:
    """The best displayed value among finite ones (None when there is none)."""
    shown = [_fmt(x) for x in values if x is not None and math.isfinite(float(x))]
    return max(shown, key=float) if shown else None


def _best(section: Section, dataset: str, metric: str) -> str | None:
    """The best shown value of a column in one section (compared as displayed)."""
    shown = [
        _fmt(v)
        for r in section.rows
        if (v := r.mean(dataset, metric)) is not None and math.isfinite(float(v))
    ]  # a NaN/Inf mean is shown as it is, never as the best
    return max(shown, key=float) if shown else None


def _cells(
    section: Section, row: Row, datasets: list[str], metrics: list[str]
) -> list[tuple[str | None, bool, bool]]:
    """(shown value or None, is best, is significant) per column."""
    out = []
    for ds in datasets:
        for m in metrics:
            cell = row.cell(ds, m)
            shown = _fmt(cell.mean) if cell is not None else None
            out.append(
                (
                    shown,
                    shown is not None and shown == _best(section, ds, m),
                    bool(cell is not None and cell.significant),
                )
            )
    return out


def _ordered(keys: Any, order: list[str]) -> list[str]:
    """``keys`` in ``order`` first, the rest sorted: JSON round trips (sorted keys) render alike."""
    keys = [str(k) for k in keys]
    return [k for k in order if k in keys] + sorted(k for k in keys if k not in order)


def _lambda_notes(results: Results) -> list[str]:
    """Per row, the λ it used per dataset, when λ varies (it was tuned); fixed λ is in the legend."""
    notes, seen = [], set()
    for s in results.sections:
        for r in shown_rows(s)[0]:
            per = {d: _lambda_cell(results, s.triplet, r.key, d) for d in results.all_datasets()}
            per = {d: v for d, v in per.items() if v}
            seen.update(per.values())
            if per:
                notes.append(
                    f"{s.triplet}, {r.label}: " + ", ".join(f"{d} {v}" for d, v in per.items())
                )
    return notes if len(seen) > 1 else []  # one λ everywhere: fixed, not tuned


def _alpha_notes(results: Results) -> list[str]:
    notes = []
    datasets = results.all_datasets()
    for s in results.sections:
        for r in s.rows:
            a = r.alpha
            if isinstance(a, Mapping) and a:
                a = {ds: a[ds] for ds in _ordered(a, datasets)}
                per = ", ".join(
                    f"{ds} α={v:g}"
                    if isinstance(v, int | float)
                    else f"{ds} α={n:g}"
                    if (n := _number(str(v))) is not None
                    else f"{ds} {alpha_display(str(v))}"
                    if str(v).startswith('{"grid"')
                    else f"{ds} α={alpha_display(str(v))}"
                    for ds, v in a.items()
                )
                notes.append(f"{s.triplet}, {r.label}: {per}")
    return notes


def _legend(results: Results) -> str:
    sig = results.legend_significance()
    test = {"student": "paired t-test", "fisher": "Fisher randomisation test"}.get(
        sig.test, str(sig.test)
    )
    corr_txt = ""
    if sig.correction == "bonferroni":
        m = sig.comparisons
        corr_txt = f"Bonferroni-corrected for {m} comparisons, " if m else "Bonferroni-corrected, "
    return (
        f"Best value per column within each block in bold; `*` marks a significant "
        f"improvement over the best baseline ({test}, {corr_txt}p < {sig.max_p:g})."
    )


def render_markdown(results: ResultsLike) -> str:
    """Table 1 as a GitHub Markdown table: one block of rows per triplet."""
    results = as_results(results)
    datasets, metrics = results.all_datasets(), list(results.metrics)
    header = ["Model"] + [f"{ds} {m}" for ds in datasets for m in metrics]
    lines = [
        f"# Results: {results.experiment}".rstrip(),
        "",
        *render_verdicts_markdown(results),
        *(["## All rows", ""] if any(s.verdicts for s in results.sections) else []),
        "| " + " | ".join(header) + " |",
        "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    folded: list[str] = []
    for s in results.sections:
        lines.append("| " + " | ".join([f"*{s.triplet}*"] + [""] * (len(header) - 1)) + " |")
        rows, why = shown_rows(s)
        if why:
            folded.append(why)
        for r in rows:
            shown = []
            for v, best, sig in _cells(s, r, datasets, metrics):
                if v is None:
                    shown.append(_DASH)
                    continue
                text = f"**{v}**" if best else v
                shown.append(text + ("\\*" if sig else ""))
            label = r.label.replace("|", "\\|")
            lines.append("| " + " | ".join([label] + shown) + " |")
    lines += ["", _legend(results)]
    notes = _alpha_notes(results)
    if notes:
        lines += ["", "α chosen per dataset:", ""] + [f"- {n}" for n in notes]
    if folded:
        lines += ["", *[f"Note: {w}." for w in folded]]
    tuned_lambda = _lambda_notes(results)
    if tuned_lambda:
        lines += ["", "λ (fusion weights: first stage / model) tuned on dev:", ""]
        lines += [f"- {n}" for n in tuned_lambda]
    warned = [(s.triplet, n) for s in results.sections for n in s.notes]
    if warned:
        lines += ["", "Warnings (rows to read with care):", ""]
        lines += [f"- {t}: {n}" for t, n in warned]
    chosen = selection_notes(results)
    if chosen:
        lines += ["", "α selection (bootstrap interval; see selection.md):", ""]
        lines += [f"- {n}" for n in chosen]
    return "\n".join(lines) + "\n"


_TEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}
_THETA = re.compile(r"Θ(')?([0-9A-Za-z](?![0-9A-Za-z]))?")


def _tex(text: str) -> str:
    """Escape LaTeX specials; Θ0/ΘD/Θ' and α become math."""
    s = "".join(_TEX_SPECIAL.get(ch, ch) for ch in str(text))

    def theta(m: re.Match[str]) -> str:
        prime, sub = m.group(1) or "", m.group(2)
        return f"$\\Theta{prime}" + (f"_{{{sub}}}" if sub else "") + "$"

    s = _THETA.sub(theta, s)
    return s.replace("α", r"$\alpha$").replace("λ", r"$\lambda$")


def render_latex(results: ResultsLike) -> str:
    """Table 1 as a booktabs ``tabular`` (needs ``\\usepackage{booktabs}``)."""
    results = as_results(results)
    datasets, metrics = results.all_datasets(), list(results.metrics)
    ncols = 1 + len(datasets) * len(metrics)
    out = [
        "% generated by mergekit-ir; needs \\usepackage{booktabs}",
        "\\begin{tabular}{l" + "c" * (ncols - 1) + "}",
        "\\toprule",
    ]
    out.append(
        " & ".join(
            [""] + [f"\\multicolumn{{{len(metrics)}}}{{c}}{{{_tex(ds)}}}" for ds in datasets]
        )
        + " \\\\"
    )
    rules = [
        f"\\cmidrule(lr){{{2 + i * len(metrics)}-{1 + (i + 1) * len(metrics)}}}"
        for i in range(len(datasets))
    ]
    if rules and metrics:
        out.append(" ".join(rules))
    out.append(" & ".join(["Model"] + [_tex(m) for _ in datasets for m in metrics]) + " \\\\")
    for s in results.sections:
        out.append("\\midrule")
        out.append(f"\\multicolumn{{{ncols}}}{{l}}{{\\textit{{{_tex(s.triplet)}}}}} \\\\")
        out.append("\\midrule")
        for r in shown_rows(s)[0]:
            shown = []
            for v, best, sig in _cells(s, r, datasets, metrics):
                if v is None:
                    shown.append("--")
                    continue
                text = f"\\textbf{{{v}}}" if best else v
                shown.append(text + ("$^{*}$" if sig else ""))
            out.append(" & ".join([_tex(r.label)] + shown) + " \\\\")
    out += ["\\bottomrule", "\\end{tabular}"]
    verdict_table = render_verdicts_latex(results)
    if verdict_table:
        out += [
            "",
            "% Did merging help? Each merged row against ΘT and the best baseline.",
            verdict_table,
        ]
    return "\n".join(out) + "\n"


def render_csv(results: ResultsLike) -> str:
    """Long format, one line per cell, full precision: for spreadsheets and diffs."""
    results = as_results(results)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        [
            "triplet",
            "row",
            "dataset",
            "metric",
            "value",
            "significant",
            "p_value",
            "alpha",
            "lambda",
        ]
    )
    datasets, metrics = results.all_datasets(), list(results.metrics)
    for s in results.sections:
        for r in s.rows:
            for ds in datasets:
                for m in metrics:
                    cell = r.cell(ds, m)
                    if cell is None:
                        continue
                    w.writerow(
                        [
                            s.triplet,
                            r.key,
                            ds,
                            m,
                            repr(float(cell.mean)),
                            "true" if cell.significant else "false",
                            "" if cell.p_value is None else repr(float(cell.p_value)),
                            _alpha_cell(r.alpha_for(ds)),
                            _lambda_cell(results, s.triplet, r.key, ds),
                        ]
                    )
    return buf.getvalue()


def _alpha_cell(alpha: Any) -> str:
    if alpha is None:
        return ""
    return f"{alpha:g}" if isinstance(alpha, int | float) else str(alpha)


def _lambda_cell(results: Results, triplet: str, row: str, dataset: str) -> str:
    """The fusion weights a row used on a dataset (first weight: the first stage)."""
    params = results.fusion.get(triplet, {}).get(row, {}).get(dataset) or {}
    weights = params.get("weights")
    if weights is None:
        return ";".join(f"{k}={v}" for k, v in sorted(params.items()))
    return "/".join(f"{float(w):g}" for w in weights)


def shown_rows(section: Section) -> tuple[list[Row], str | None]:
    """The rows a table prints, and why one was folded: Θ'(tuned α) *is* Θ'(α=1) when every
    dataset's tuned α is 1 (tuned so, or no dev split), so it is printed once."""
    at_1, best = section.row(MERGED_AT_1), section.row(MERGED_BEST)
    if at_1 is None or best is None or not isinstance(best.alpha, Mapping) or not best.alpha:
        return list(section.rows), None
    if any(_number(str(a)) != 1.0 for a in best.alpha.values()):
        return list(section.rows), None
    rows = [r for r in section.rows if r.key != MERGED_BEST]
    return (
        rows,
        f"{section.triplet}: the tuned α is 1 on every dataset, so Θ' (tuned α) is the Θ' (α=1) row",
    )


def _number(label: str) -> float | None:
    """A scalar α label as a number; None for a layer-wise α (its label is JSON)."""
    try:
        return float(label)
    except ValueError:
        return None


def _alpha_order(labels: list[str], grid: list[str] | None = None) -> list[str]:
    """The grid's own (YAML) order when the results record it; else scalar α in numeric
    order, then layer-wise α sorted by label. Either way only ``results.json`` decides, so
    ``mergeir report`` gives the same bytes as the run."""
    seen = set(labels)
    if grid:
        ordered = [lb for lb in dict.fromkeys(grid) if lb in seen]
        return ordered + _alpha_order([lb for lb in labels if lb not in set(ordered)])
    scalars = sorted({lb for lb in labels if _number(lb) is not None}, key=lambda lb: float(lb))
    return scalars + sorted({lb for lb in labels if _number(lb) is None})


@dataclass(frozen=True)
class _AlphaColumn:
    """One triplet × dataset of the α ablation: its curve, references and chosen α."""

    triplet: str
    dataset: str
    metric: str
    split: str
    values: dict[str, float]
    references: dict[str, float]
    chosen: str | None  # the α label Θ' (tuned α) used on this dataset


def _alpha_columns(results: Results) -> list[_AlphaColumn]:
    cols = []
    ablation = results.alpha_ablation
    for triplet in _ordered(ablation, [s.triplet for s in results.sections]):
        abl = ablation[triplet]
        section = results.section(triplet)
        best_row = section.row(MERGED_BEST) if section is not None else None
        for ds in _ordered(abl.values, results.all_datasets()):
            vals = abl.values[ds]
            if not vals:
                continue
            used = best_row.alpha_for(ds) if best_row is not None else None
            chosen = (
                abl.best if used is None else used if isinstance(used, str) else alpha_label(used)
            )
            cols.append(
                _AlphaColumn(
                    triplet,
                    ds,
                    abl.metric,
                    abl.split,
                    dict(vals),
                    dict(abl.references.get(ds, {})),
                    chosen,
                )
            )
    return cols


def _grid(results: Results) -> list[str]:
    return [a for abl in results.alpha_ablation.values() for a in abl.order]


def render_alpha_table(results: ResultsLike) -> str:
    """Table 3: the α ablation, rows α, columns triplet × dataset, best α per column bold;
    ΘT and BM25 on the same split below the grid when the run measured them."""
    res = as_results(results)
    cols = _alpha_columns(res)
    if not cols:
        search = _search_lines(res)  # a search that ended on a subset has no full-dev value
        return "\n".join(["# α ablation", "", "No α ablation in these results.", *search]) + "\n"
    kinds = sorted({(c.metric, c.split) for c in cols})
    same = len(kinds) == 1
    header = ["α"] + [
        f"{c.triplet} / {c.dataset}" + ("" if same else f" ({c.metric}, {c.split})") for c in cols
    ]
    alphas = _alpha_order([a for c in cols for a in c.values] + _searched(res), _grid(res))
    best = [_best_of(c.values.values()) for c in cols]
    lines = ["# α ablation", ""]
    if same:
        lines += [f"{kinds[0][0]} on the {kinds[0][1]} split for each α.", ""]
    lines += [
        "| " + " | ".join(header) + " |",
        "|" + "|".join([":---"] + ["---:"] * len(cols)) + "|",
    ]
    for a in alphas:
        row = [alpha_display(a).replace("|", "\\|")]
        for c, b in zip(cols, best, strict=True):
            if a not in c.values:
                row.append(_DASH)
            else:
                row.append(
                    f"**{_fmt(c.values[a])}**" if _fmt(c.values[a]) == b else _fmt(c.values[a])
                )
        lines.append("| " + " | ".join(row) + " |")
    for ref in _REFERENCES:
        if any(ref in c.references for c in cols):
            cells = [_fmt(c.references[ref]) if ref in c.references else _DASH for c in cols]
            lines.append("| " + " | ".join([f"*{ref}*"] + cells) + " |")
    chosen = [c.chosen for c in cols]
    if any(chosen):
        lines += [
            "",
            "Chosen α (the Θ' (tuned α) row): "
            + "; ".join(
                f"{c.triplet} / {c.dataset} {alpha_display(c.chosen)}" for c in cols if c.chosen
            )
            + ".",
        ]
    lines += _search_lines(res)
    return "\n".join(lines) + "\n"


def _searched(results: Results) -> list[str]:
    """Every grid point of a searched sweep (``tuning.search``), scored on all queries or not.
    (``getattr``: a process that loaded ``results`` before the field existed still renders.)"""
    return [
        a
        for abl in results.alpha_ablation.values()
        if getattr(abl, "search", None)
        for a in abl.order
    ]


def _search_lines(results: Results) -> list[str]:
    """What a ``tuning.search`` spent against the full grid, and its rounds, per triplet."""
    out = []
    for triplet, abl in results.alpha_ablation.items():
        s = getattr(abl, "search", None)
        if not s:
            continue
        total = sum((s.get("queries") or {}).values())
        rounds = []
        for r in s.get("rounds") or []:
            scored = sum((r.get("queries") or {}).values())
            kept = r.get("kept") or []
            went = (
                f"chose {alpha_display(kept[0])}"
                if r is s["rounds"][-1] and kept
                else f"kept {len(kept)}"
            )
            rounds.append(
                f"{len(r.get('points') or [])} points on {scored}/{total} queries, {went}"
            )
        grid = s.get("grid_evaluations") or 0
        share = f" ({100 * s['evaluations'] / grid:.0f} %)" if grid else ""
        out += [
            "",
            f"Search ({triplet}): {s.get('method')} scored {s.get('evaluations')} of the full "
            f"grid's {grid} query × model evaluations{share}, stopped: {s.get('stopped')}; "
            + "; ".join(rounds)
            + f". {_DASH}: a point eliminated on a subset of the dev queries (its subset means "
            "are in results.json).",
        ]
    return out


#: Reference lines of the α ablation, in the order tables and plots show them.
_REFERENCES = ("ΘT", "BM25")


def render_alpha_latex(results: ResultsLike) -> str | None:
    """Table 3 as a booktabs ``tabular``: rows α, columns triplet / dataset, best bold."""
    res = as_results(results)
    cols = _alpha_columns(res)
    if not cols:
        return None
    alphas = _alpha_order([a for c in cols for a in c.values], _grid(res))
    best = [_best_of(c.values.values()) for c in cols]
    out = [
        "% generated by mergekit-ir; needs \\usepackage{booktabs}",
        "\\begin{tabular}{l" + "c" * len(cols) + "}",
        "\\toprule",
        " & ".join(["$\\alpha$"] + [f"{_tex(c.triplet)} / {_tex(c.dataset)}" for c in cols])
        + " \\\\",
        "\\midrule",
    ]
    for a in alphas:
        row = [_tex(alpha_display(a))]
        for c, b in zip(cols, best, strict=True):
            if a not in c.values:
                row.append("--")
            else:
                v = c.values[a]
                row.append(f"\\textbf{{{_fmt(v)}}}" if _fmt(v) == b else _fmt(v))
        out.append(" & ".join(row) + " \\\\")
    refs = [r for r in _REFERENCES if any(r in c.references for c in cols)]
    if refs:
        out.append("\\midrule")
    for ref in refs:
        cells = [_fmt(c.references[ref]) if ref in c.references else "--" for c in cols]
        out.append(" & ".join([_tex(ref)] + cells) + " \\\\")
    out += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(out) + "\n"


def _alpha_png(results: Results) -> bytes | None:
    """The α curve of each column, ΘT (dashed) and BM25 (dotted) on the same split, the chosen
    α starred; layer-wise α, which have no position on the α axis, as points to the right of
    it, labelled on the axis."""
    cols = _alpha_columns(results)
    if not cols:
        return None
    # Figure + Agg canvas directly: no pyplot state, no global backend switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    alphas = _alpha_order([a for c in cols for a in c.values], _grid(results))
    scalars = [a for a in alphas if _number(a) is not None]
    layered = [a for a in alphas if _number(a) is None]
    right = max([_number(a) or 0.0 for a in scalars] + [1.0])
    step = 0.15 * max(right - min([_number(a) or 0.0 for a in scalars] + [0.0]), 1.0)
    x_of = {a: _number(a) for a in scalars} | {
        a: right + step * (i + 1) for i, a in enumerate(layered)
    }
    fig = Figure(figsize=(6.5 if layered else 6.0, 4.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for c in cols:
        line_x = sorted(x_of[a] for a in c.values if a in scalars)
        by_x = {x_of[a]: v for a, v in c.values.items()}
        (line,) = ax.plot(
            line_x, [by_x[x] for x in line_x], marker="o", label=f"{c.triplet} / {c.dataset}"
        )
        colour = line.get_color()
        lw = [a for a in layered if a in c.values]
        if lw:
            ax.plot([x_of[a] for a in lw], [c.values[a] for a in lw], "D", color=colour)
        for ref, style in zip(_REFERENCES, ("--", ":"), strict=True):
            if ref in c.references:
                ax.axhline(c.references[ref], color=colour, linestyle=style, linewidth=1)
        if c.chosen in c.values:
            ax.plot(
                [x_of[c.chosen]],
                [c.values[c.chosen]],
                marker="*",
                markersize=15,
                color=colour,
                markeredgecolor="black",
                linestyle="none",
            )
    handles = []
    if any("ΘT" in c.references for c in cols):
        handles.append(Line2D([], [], color="grey", linestyle="--", label="ΘT (α = 0)"))
    if any("BM25" in c.references for c in cols):
        handles.append(Line2D([], [], color="grey", linestyle=":", label="BM25 alone"))
    if any(c.chosen in c.values for c in cols):
        handles.append(
            Line2D(
                [], [], color="grey", marker="*", markersize=12, linestyle="none", label="chosen α"
            )
        )
    if layered:
        ticks = [x_of[a] for a in scalars] + [x_of[a] for a in layered]
        labels = [f"{_number(a):g}" for a in scalars] + [_short(alpha_display(a)) for a in layered]
        ax.set_xticks(ticks, labels, fontsize="x-small")
        for lab in ax.get_xticklabels()[len(scalars) :]:
            lab.set_rotation(30)
            lab.set_horizontalalignment("right")
    kinds = sorted({(c.metric, c.split) for c in cols})
    ax.set_xlabel("α")
    ax.set_ylabel(" / ".join(f"{m} ({sp})" for m, sp in kinds))
    ax.grid(True, alpha=0.3)
    ax.legend(handles=ax.get_legend_handles_labels()[0] + handles, fontsize="small")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_PNG_DPI, metadata={"Software": None})
    return buf.getvalue()


def _short(text: str, n: int = 24) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def plot_alpha(results: ResultsLike, path: str | Path) -> Path | None:
    """The α ablation as a PNG (a line per triplet × dataset); None without data."""
    png = _alpha_png(as_results(results))
    return None if png is None else atomic.write_bytes(path, png)


def _signed(v: float) -> str:
    return f"{v:+.3f}" if round(v, 3) != 0 else "0.000"


def render_reported(results: ResultsLike) -> str | None:
    """Ours next to the published cells (an experiment's ``reported:`` block); None without any."""
    results = as_results(results)
    cells = results.reported
    if not cells:
        return None
    lines = [
        f"# Compared with reported numbers: {results.experiment}".rstrip(),
        "",
        f"Δ = ours − reported; |Δ| ≤ {TOLERANCE:g} counts as reproduced. `–`: not in this run.",
        "`*`: a significant improvement over the best baseline, as the paper marks it (reported) "
        "and as this run does (ours).",
        "",
        "| triplet | dataset | row | metric | reported | ours | Δ | source |",
        "|:---|:---|:---|:---|---:|---:|---:|:---|",
    ]
    for c in cells:
        label = c.label or c.row
        if c.alpha_ours is not None and "α=" not in label:  # "Θ' (tuned α)": which α it got here
            n = _number(str(c.alpha_ours))
            label += f"; ours α={n:g}" if n is not None else f"; ours α={c.alpha_ours}"
        if c.alpha_reported is not None:
            label += f"; reported α={float(c.alpha_reported):g}"
        reported = float(c.reported)
        shown = _fmt(reported) if round(reported, 3) == reported else f"{reported:.4f}"
        row = [
            c.triplet or _DASH,
            c.dataset,
            label,
            c.metric,
            shown + ("*" if c.significant_reported else ""),
            _DASH if c.ours is None else _fmt(c.ours) + ("*" if c.significant_ours else ""),
            _DASH if c.delta is None else _signed(c.delta),
            c.source,
        ]
        lines.append(
            "| " + " | ".join(str(x).replace("|", "\\|").replace("*", "\\*") for x in row) + " |"
        )
    marks = marks_summary(cells)
    lines += ["", *([marks, ""] if marks else []), summary(cells)]
    return "\n".join(lines) + "\n"


def write_reports(results: ResultsLike, out_dir: str | Path) -> list[Path]:
    """Write results.md/.tex/.csv, alpha.md, alpha.png and reported.md (when there is data), atomically.

    An optional file without data is removed, so a stale plot or comparison from an
    earlier run never sits next to tables it does not match.
    """
    results = as_results(results)
    out = Path(out_dir)
    # every text is rendered before the first file is written: a rendering error leaves the
    # reports as they were, never half old and half new
    texts = {
        "results.md": render_markdown(results),
        "results.tex": render_latex(results),
        "results.csv": render_csv(results),
        "alpha.md": render_alpha_table(results),
    }
    optional = {
        "alpha.tex": render_alpha_latex(results),
        "selection.md": render_selection(results),
        "selection.png": selection_png(results, _PNG_DPI),
        "adamerging.png": coefficients_png(results, _PNG_DPI),
    }
    reported = render_reported(results)
    written = [atomic.write_text(out / name, text) for name, text in texts.items()]
    png = plot_alpha(results, out / "alpha.png")
    if png is not None:
        written.append(png)
    else:
        (out / "alpha.png").unlink(missing_ok=True)
    for name, content in optional.items():
        if content is None:
            (out / name).unlink(missing_ok=True)
        elif isinstance(content, bytes):
            written.append(atomic.write_bytes(out / name, content))
        else:
            written.append(atomic.write_text(out / name, content))
    if reported is not None:
        written.append(atomic.write_text(out / "reported.md", reported))
    else:
        (out / "reported.md").unlink(missing_ok=True)
    return written
