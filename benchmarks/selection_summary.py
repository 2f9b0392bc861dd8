"""Pool the α-selection reports of several runs: mean regret and worst Δ ΘT per selector.

    python benchmarks/selection_summary.py RUN_DIR [RUN_DIR ...] [--exclude TRIPLET ...]

Each run's ``selection.md`` has a summary over its own triplet × dataset cases; the issue's
goals (a label-free selector's mean regret within 0.005 of the dev-tuned α's; with the guard,
never more than 0.005 below ΘT) are over every case measured, so this reads the runs'
``results.json`` and pools the cases. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mergekit_ir.reports.results import as_results, read_results_json
from mergekit_ir.reports.selection import selection_rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--exclude", nargs="*", default=[], help="triplets to leave out")
    args = ap.parse_args()
    pooled: dict[str, list[tuple[float, float]]] = {}
    cases = []
    for run in args.runs:
        results = as_results(read_results_json(run))
        for triplet, sel in results.alpha_selection.items():
            if triplet in args.exclude:
                continue
            for dataset in sel.test_curve:
                cases.append(f"{triplet}/{dataset}")
                for r in selection_rows(sel, dataset):
                    c = r.get("choice")
                    label = c.selector if c is not None else r["source"]
                    if c is None and label != "dev-tuned α":
                        continue
                    if r["regret"] is not None:
                        pooled.setdefault(label, []).append((r["regret"], r["vs_theta_t"]))
    print(f"{len(cases)} cases: {', '.join(cases)}\n")
    print("| α from | cases | mean regret | worst Δ ΘT |")
    print("|:---|---:|---:|---:|")
    for label in sorted(pooled):
        xs = pooled[label]
        worst = min((v for _, v in xs if v is not None), default=float("nan"))
        print(f"| {label} | {len(xs)} | {sum(r for r, _ in xs) / len(xs):.4f} | {worst:+.4f} |")


if __name__ == "__main__":
    main()
