"""The selection report (``selection.md``, ``selection.png``): how well each α selector chose.

Per triplet × dataset: the test objective at α = 0 (ΘT), α = 1, the dev-tuned α, the oracle
(best test) α and each selector's α, with the selector's bootstrap interval and gain over
α = 0, the regret (oracle − chosen) and Kendall's τ between the selector's curve and the test
curve. Rendered only from :class:`~mergekit_ir.results.Results`, so ``mergeir report``
gives the same bytes as the run.
"""

from __future__ import annotations

import io
import math
from typing import Any

from mergekit_ir.results import AlphaSelection, Results, alpha_label
from mergekit_ir.tuning.bootstrap import argmax, kendall_tau

_DASH = "–"


def _num(label: str) -> float | None:
    try:
        return float(label)
    except ValueError:
        return None


def _grid(curve: dict[str, float]) -> list[str]:
    return sorted(curve, key=lambda a: (_num(a) is None, _num(a) or 0.0, a))


def _f(v: float | None, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return _DASH
    return f"{v:+.4f}" if signed else f"{v:.4f}"


def _ordered(keys: Any, order: list[str]) -> list[str]:
    keys = [str(k) for k in keys]
    return [k for k in order if k in keys] + sorted(k for k in keys if k not in order)


def oracle(test: dict[str, float]) -> str:
    """The best test α (ties to the smaller α: the least change to ΘT)."""
    return argmax(test, _grid(test))


def selection_rows(sel: AlphaSelection, dataset: str) -> list[dict[str, Any]]:
    """The report's rows for one dataset: references first, then every selector."""
    test = sel.test_curve.get(dataset, {})
    if not test:
        return []
    best = oracle(test)
    rows: list[dict[str, Any]] = []

    def add(source: str, alpha: str | None, **extra: Any) -> None:
        value = test.get(alpha) if alpha is not None else None
        rows.append(
            {
                "source": source,
                "alpha": alpha,
                "test": value,
                "regret": None if value is None else test[best] - value,
                "vs_theta_t": None if value is None or "0" not in test else value - test["0"],
                **extra,
            }
        )

    add("α = 0 (ΘT)", "0")
    add("α = 1", "1")
    if dataset in sel.dev_alpha:
        add("dev-tuned α", sel.dev_alpha[dataset])
    add("oracle (best test α)", best)
    grid_test = {a: v for a, v in test.items()}
    for label, by_ds in sel.choices.items():
        c = by_ds.get(dataset)
        if c is None:
            continue
        add(
            label + (" (Θ' row)" if label == sel.primary else ""),
            c.alpha,
            choice=c,
            tau=kendall_tau(c.curve, {a: grid_test[a] for a in c.curve if a in grid_test}),
        )
    return rows


def render_selection(results: Results) -> str | None:
    """``selection.md``; None when the run used no selectors."""
    if not results.alpha_selection:
        return None
    lines = [f"# α selection: {results.experiment}".rstrip(), ""]
    metric = next(iter(results.alpha_selection.values())).metric
    lines += [
        f"Test {metric} (fusion λ fixed, as α is tuned) at each α; regret = oracle − chosen; "
        "Δ ΘT = chosen − α = 0; τ: Kendall's τ-b between the selector's α curve and the test "
        "curve. The oracle and the test curve use the test judgments, which no selector saw. "
        "Interval: bootstrap percentile interval of the chosen α; gain: over α = 0 on the "
        "selector's own objective (`+guard`: α = 0 unless its lower bound is above 0).",
        "",
        "| triplet | dataset | α from | α | α interval | gain over α=0 [interval] "
        f"| test {metric} | regret | Δ ΘT | τ |",
        "|:---|:---|:---|---:|:---|:---|---:|---:|---:|---:|",
    ]
    summary: dict[str, list[tuple[float, float]]] = {}
    order = [s.triplet for s in results.sections]
    for t in _ordered(results.alpha_selection, order):
        sel = results.alpha_selection[t]
        for d in _ordered(sel.test_curve, results.all_datasets()):
            for r in selection_rows(sel, d):
                c = r.get("choice")
                iv = gain = _DASH
                alpha = _DASH if r["alpha"] is None else r["alpha"]
                if c is not None:
                    if c.interval is not None:
                        iv = f"[{c.interval[0]:g}, {c.interval[1]:g}]"
                    if c.gain_interval is not None:
                        gain = (
                            f"{_f(c.gain, True)} [{_f(c.gain_interval[0], True)}, "
                            f"{_f(c.gain_interval[1], True)}]"
                        )
                    if c.guarded:
                        alpha += f" (guard; raw {c.raw_alpha})"
                    if r["regret"] is not None:
                        summary.setdefault(c.selector, []).append((r["regret"], r["vs_theta_t"]))
                elif r["source"] == "dev-tuned α" and r["regret"] is not None:
                    summary.setdefault("dev-tuned α", []).append((r["regret"], r["vs_theta_t"]))
                if alpha.startswith("[") or c is not None and c.guarded and alpha.startswith("0"):
                    alpha = _short_learnt(alpha, c)
                tau = r.get("tau")
                row = [
                    t,
                    d,
                    r["source"],
                    alpha,
                    iv,
                    gain,
                    _f(r["test"]),
                    _f(r["regret"]),
                    _f(r["vs_theta_t"], True),
                    _DASH if tau is None else f"{tau:+.2f}",
                ]
                lines.append("| " + " | ".join(str(x).replace("|", "\\|") for x in row) + " |")
    lines += _coefficient_tables(results, order)
    if summary:
        lines += [
            "",
            "## Summary over triplet × dataset",
            "",
            "| α from | cases | mean regret | worst Δ ΘT |",
            "|:---|---:|---:|---:|",
        ]
        for label in sorted(summary):
            xs = summary[label]
            worst = min((v for _, v in xs if v is not None), default=None)
            lines.append(
                f"| {label} | {len(xs)} | {_f(sum(r for r, _ in xs) / len(xs))} | {_f(worst, True)} |"
            )
    return "\n".join(lines) + "\n"


def selection_png(results: Results, dpi: int = 100) -> bytes | None:
    """One panel per triplet × dataset: the dev curve, each selector's curve and the test
    curve (marked oracle), scalar α only.

    The curves measure different things on very different scales (a crop objective near 0.06,
    a consensus near 0.97, NDCG near 0.5), so each is drawn relative to its own range — 0 at
    its minimum, 1 at its maximum — with the range in the legend: what the panel compares is
    where each curve peaks, which is what each selector acts on."""
    panels = []
    for t in _ordered(results.alpha_selection, [s.triplet for s in results.sections]):
        sel = results.alpha_selection[t]
        for d in _ordered(sel.test_curve, results.all_datasets()):
            panels.append((t, d, sel))
    if not panels:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 3.6 * len(panels)))
    FigureCanvasAgg(fig)
    for i, (t, d, sel) in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, i + 1)

        def line(curve: dict[str, float], label: str, style: str, ax: Any = ax) -> None:
            pts = sorted((n, v) for a, v in curve.items() if (n := _num(a)) is not None)
            if pts:
                lo, hi = min(p[1] for p in pts), max(p[1] for p in pts)
                span = hi - lo or 1.0
                ax.plot(
                    [p[0] for p in pts],
                    [(p[1] - lo) / span for p in pts],
                    style,
                    marker="o",
                    label=f"{label} [{lo:.3f}–{hi:.3f}]",
                )

        abl = results.alpha_ablation.get(t)
        if abl is not None and d in abl.values:
            line(abl.values[d], f"dev ({abl.metric})", "-")
        curves: dict[str, tuple[dict[str, float], list[str]]] = {}
        for label, by_ds in sel.choices.items():
            if d in by_ds:  # guarded and unguarded twins share one curve: draw it once
                key = repr(sorted(by_ds[d].curve.items()))
                curves.setdefault(key, (by_ds[d].curve, []))[1].append(label)
        for curve, labels in curves.values():
            line(curve, " = ".join(labels), "--")
        line(sel.test_curve[d], "test (oracle)", ":")
        ax.set_title(f"{t} / {d}", fontsize="small")
        ax.set_xlabel("α")
        ax.set_ylabel("relative to own range")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="x-small")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


def _short_learnt(alpha: str, choice: Any) -> str:
    """A learnt layer-wise α (AdaMerging's JSON rules) is named, not spelled, in the table."""
    if alpha.startswith("["):
        return "learnt, layer-wise (coefficients below)"
    raw = choice.raw_alpha or ""
    if raw.startswith("["):
        return alpha.split(" (guard")[0] + " (guard; raw: learnt, layer-wise)"
    return alpha


def _groups(diagnostics: dict[str, Any]) -> list[str]:
    """Learnt coefficients' groups in their own order (embeddings, blocks, rest), which
    ``diagnostics["groups"]`` keeps: results.json sorts the coefficients' keys."""
    coef = diagnostics.get("coefficients") or {}
    order = [g for g in diagnostics.get("groups") or [] if g in coef]
    return order + [g for g in coef if g not in order]


def _learnt(results: Results, order: list[str]) -> list[tuple[str, str, str, Any]]:
    """(triplet, dataset, selector, choice) of every choice that learnt coefficients."""
    found = []
    for t in _ordered(results.alpha_selection, order):
        sel = results.alpha_selection[t]
        for label, by_ds in sel.choices.items():
            for d in _ordered(by_ds, results.all_datasets()):
                if by_ds[d].diagnostics.get("coefficients"):
                    found.append((t, d, label, by_ds[d]))
    return found


def _coefficient_tables(results: Results, order: list[str]) -> list[str]:
    """AdaMerging's learnt coefficients per group (block), with where they started."""
    lines: list[str] = []
    for t, d, label, c in _learnt(results, order):
        diag = c.diagnostics
        lines += [
            "",
            f"## Learnt coefficients: {t} / {d} ({label})",
            "",
            f"{diag.get('granularity', 'block')}-wise, from {diag.get('init')} over "
            f"{diag.get('steps')} steps ({diag.get('objective')}; {diag.get('test_queries', 0)} "
            f"test queries, {diag.get('pseudo_queries', 0)} pseudo-queries, temperature "
            f"{diag.get('temperature')}); guard on {diag.get('guard_queries')} held-out "
            f"pseudo-queries: {'ΘT kept' if c.guarded else 'passed'} (see adamerging.png).",
            "",
            "| group | coefficient |",
            "|:---|---:|",
        ]
        for group in _groups(diag):
            lines.append(f"| {group} | {diag['coefficients'][group]:+.4f} |")
    return lines


def coefficients_png(results: Results, dpi: int = 100) -> bytes | None:
    """One panel per learnt choice: each group's coefficient (embeddings, blocks in order,
    the rest), the starting value dashed, and whether the guard kept ΘT."""
    found = _learnt(results, [s.triplet for s in results.sections])
    if not found:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 3.0 * len(found)))
    FigureCanvasAgg(fig)
    for i, (t, d, label, c) in enumerate(found):
        ax = fig.add_subplot(len(found), 1, i + 1)
        coef = c.diagnostics["coefficients"]
        names = _groups(c.diagnostics)
        ax.bar(range(len(names)), [coef[n] for n in names], color="tab:blue")
        init = c.diagnostics.get("init")
        if isinstance(init, int | float):
            ax.axhline(init, linestyle="--", color="gray", label=f"start {init:g}")
        ax.axhline(0.0, color="black", linewidth=0.5)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=60, ha="right", fontsize="x-small")
        guard = "guard kept ΘT" if c.guarded else "guard passed"
        ax.set_title(f"{t} / {d}: {label} ({guard})", fontsize="small")
        ax.set_ylabel("coefficient c_l")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize="x-small")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


def selection_notes(results: Results) -> list[str]:
    """One line per triplet × dataset for results.md: the Θ' row's α with its interval."""
    notes = []
    for t, sel in results.alpha_selection.items():
        for d, c in sel.choices.get(sel.primary, {}).items():
            iv = "" if c.interval is None else f" [{c.interval[0]:g}, {c.interval[1]:g}]"
            coef = c.diagnostics.get("coefficients")
            groups = _groups(c.diagnostics) if coef else []
            learnt = (
                "learnt layer-wise ("
                + ", ".join(f"{g} {coef[g]:.3g}" for g in groups[:8])
                + (", …" if len(groups) > 8 else "")
                + ")"
                if coef
                else None
            )
            guard = f", guard: raw α {learnt or c.raw_alpha}" if c.guarded else ""
            shown = learnt if learnt and not c.guarded else c.alpha
            notes.append(f"{t}, {d}: α = {shown}{iv} by {c.selector}{guard}")
    return notes


__all__ = [
    "alpha_label",
    "coefficients_png",
    "render_selection",
    "selection_notes",
    "selection_png",
]
