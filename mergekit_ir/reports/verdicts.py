"""The first screen of a report: "did merging help, by how much, and how sure are we?".

For each triplet and dataset, the tuned Θ' and Θ'(α = 1) against ΘT and the best baseline:
the difference of means per metric, the paired test's p-value (with the run's correction) and
one plain sentence on the objective. When the dev sweep never beat ΘT, it says so, and what
α = 0 would have meant. Built from :class:`~mergekit_ir.results.Verdict` values only, so
``mergeir report`` on a results.json renders the same page.
"""

from __future__ import annotations

from mergekit_ir.results import (
    MERGED_AT_1,
    MERGED_BEST,
    Results,
    Section,
    Verdict,
    row_label,
)

OUTCOME_MARK = {"better": "▲", "worse": "▼", "no significant difference": "·"}


def objective_metric(results: Results) -> str | None:
    """The metric the sentences speak about: the run's tuning objective when recorded."""
    exp = (results.manifest or {}).get("experiment") or {}
    objective = exp.get("objective") if isinstance(exp, dict) else None
    if objective in results.metrics:
        return objective
    return "NDCG@10" if "NDCG@10" in results.metrics else (results.metrics or [None])[0]


def _label(section: Section, key: str) -> str:
    row = section.row(key)
    return row.label if row is not None else row_label(key)


def _pairs(verdicts: list[Verdict]) -> list[tuple[str, str]]:
    """(candidate, against) in a fixed order: the tuned row first, ΘT before the best baseline
    (whose row may differ per metric: the cell names it)."""
    order = {MERGED_BEST: 0, MERGED_AT_1: 1}
    seen = dict.fromkeys((v.candidate, v.against) for v in verdicts)
    return sorted(seen, key=lambda c: (order.get(c[0], 2), c[1] != "theta_t"))


def dev_never_beat_theta_t(results: Results, triplet: str, dataset: str) -> str | None:
    """A sentence when no α of the dev sweep beat ΘT on that dataset, else None."""
    abl = results.alpha_ablation.get(triplet)
    if abl is None or dataset not in abl.values:
        return None
    ref = (abl.references.get(dataset) or {}).get("ΘT")
    curve = abl.values[dataset]
    if ref is None or not curve or max(curve.values()) > ref:
        return None
    best = max(curve, key=lambda a: curve[a])
    has_zero = any(_is_zero_label(a) for a in curve)
    tail = (
        "tuning kept the α it found best, so the tuned row still merges; add 0 to merge.alpha "
        "to let tuning choose ΘT itself (α = 0 is Θ' = ΘT)"
        if not has_zero
        else "α = 0 (ΘT itself) was in the grid"
    )
    return (
        f"On {dataset}'s {abl.split} split no α beat ΘT ({abl.metric}: best α = {best} "
        f"{curve[best]:.4f} vs ΘT {ref:.4f}); {tail}."
    )


def _is_zero_label(label: str) -> bool:
    try:
        return float(label) == 0.0
    except ValueError:
        return False


def render_verdicts_markdown(results: Results) -> list[str]:
    lines: list[str] = []
    metric = objective_metric(results)
    for s in results.sections:
        if not s.verdicts:
            continue
        datasets = list(dict.fromkeys(v.dataset for v in s.verdicts))
        metrics = list(dict.fromkeys(v.metric for v in s.verdicts))
        lines += [f"## Did merging help? *{s.triplet}*", ""]
        for ds in datasets:
            mine = [v for v in s.verdicts if v.dataset == ds]
            header = ["Comparison", *[f"{m} Δ (p)" for m in metrics]]
            lines += [f"**{ds}**", ""]
            lines += ["| " + " | ".join(header) + " |"]
            lines += ["|" + "|".join([":---"] + ["---:"] * len(metrics)) + "|"]
            for cand, how in _pairs(mine):
                cells = []
                for m in metrics:
                    v = next(
                        (x for x in mine if (x.candidate, x.against, x.metric) == (cand, how, m)),
                        None,
                    )
                    if v is None:
                        cells.append("–")
                        continue
                    named = "" if how == "theta_t" else f" vs {_label(s, v.reference)}"
                    cells.append(
                        f"{OUTCOME_MARK[v.outcome]} {v.delta:+.3f} ({v.p_value:.2g}){named}"
                    )
                against = "ΘT" if how == "theta_t" else "the best baseline"
                name = f"{_label(s, cand)} vs {against}".replace("|", "\\|")
                lines.append("| " + " | ".join([name, *cells]) + " |")
            lines.append("")
            for v in mine:
                if v.metric == metric and v.candidate == MERGED_BEST:
                    ref = "ΘT" if v.against == "theta_t" else _label(s, v.reference)
                    lines.append(f"- {v.sentence(_label(s, v.candidate), ref)}.")
            note = dev_never_beat_theta_t(results, s.triplet, ds)
            if note:
                lines.append(f"- {note}")
            lines.append("")
        first = s.verdicts[0]
        lines += [
            f"▲ better, ▼ worse, · no significant difference: paired {first.test} t-test on "
            f"per-query scores, significant at p < {first.threshold:.3g} (after the run's "
            "correction over the comparisons of each dataset and metric).",
            "",
        ]
    return lines


def _tex(text: str) -> str:
    return text.replace("_", "\\_").replace("%", "\\%").replace("&", "\\&")


def render_verdicts_latex(results: Results) -> str:
    """The same comparisons as a booktabs table (empty when the run has none)."""
    rows: list[str] = []
    for s in results.sections:
        for v in s.verdicts:
            ref = "$\\Theta_T$" if v.against == "theta_t" else _tex(_label(s, v.reference))
            cand = _tex(_label(s, v.candidate)).replace("Θ'", "$\\Theta'$")
            rows.append(
                f"{_tex(s.triplet)} & {_tex(v.dataset)} & {_tex(v.metric)} & {cand} & {ref} & "
                f"{v.delta:+.3f} & {v.p_value:.2g} & {v.outcome} \\\\"
            )
    if not rows:
        return ""
    return (
        "\n".join(
            [
                "\\begin{tabular}{lllllrrl}",
                "\\toprule",
                "Triplet & Dataset & Metric & Merged & vs & $\\Delta$ & $p$ & Outcome \\\\",
                "\\midrule",
                *rows,
                "\\bottomrule",
                "\\end{tabular}",
            ]
        )
        + "\n"
    )
