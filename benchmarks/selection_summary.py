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

from mergekit_ir.reports.selection import selection_rows
from mergekit_ir.results import as_results, read_results_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--exclude", nargs="*", default=[], help="triplets to leave out")
    ap.add_argument(
        "--cases", action="store_true", help="also a per-case table: Δ ΘT of each selector's α"
    )
    args = ap.parse_args()
    pooled: dict[str, list[tuple[float, float]]] = {}
    cases = []
    per_case: dict[str, dict[str, str]] = {}
    for run in args.runs:
        results = as_results(read_results_json(run))
        for triplet, sel in results.alpha_selection.items():
            if triplet in args.exclude:
                continue
            for dataset in sel.test_curve:
                case = f"{triplet}/{dataset}"
                cases.append(case)
                for r in selection_rows(sel, dataset):
                    c = r.get("choice")
                    label = c.selector if c is not None else r["source"].split(" (")[0]
                    if r["test"] is not None:
                        per_case.setdefault(label, {})[case] = (
                            f"{r['test']:.4f} ({r['alpha']})"
                            if label.startswith("α =")
                            else f"{r['vs_theta_t']:+.4f} ({r['alpha']})"
                        )
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
    if args.cases:
        labels = list(per_case)
        print("\nPer case: test NDCG@10 at α = 0 (ΘT) and α = 1; for every other column Δ vs ΘT;")
        print("each with the α it used.\n")
        print("| case | " + " | ".join(labels) + " |")
        print("|:---|" + "---:|" * len(labels))
        for case in cases:
            print(f"| {case} | " + " | ".join(per_case[lb].get(case, "–") for lb in labels) + " |")


if __name__ == "__main__":
    main()
