"""Fewer passes for the same choice: replay the halving search on finished runs' dev sweeps.

    python benchmarks/search_replay.py [RUN_DIR ...] [--seeds 200] [--data FILE]

A **replay**, costing no model pass: for every finished ``mergeir run`` folder given (default:
the merge-method shoot-out's runs, ``/tmp/mergeir-shootout/runs/*``, and the real-weights
verdict demo, ``/tmp/evidence/verdict-demo``), it reads the run's own ``results.json`` manifest
(registry, experiment, cache, scoring settings), takes every grid point's dev re-ranking from
the run's cache — through the runner's own cache keys, with the scorer disabled, so a missing
entry is an error, never a model pass — fuses it with the first stage as the run did and keeps
the per-query dev objective. It checks that each point's mean is the ``alpha_ablation`` value
the run reported, and that the full grid search picks the run's tuned point.

Then it runs :func:`mergekit_ir.tuning.search.run_search` on those stored values, for several
settings of ``tuning.search`` and ``--seeds`` random query orders each (the search draws its
query subsets from the experiment's seed; the replay varies it to measure how often the pick
depends on the draw), and prints per setting: the share of (case, seed) pairs that pick the
full grid's point, the cases that do so for ≥ 90 % of the seeds, the query × model evaluations
spent as a share of the grid's, and the mean dev regret (the full-dev objective lost against
the grid's point). Per-query values are saved to ``--data`` (default
``/tmp/mergeir-search-replay/perquery.json``) and read from there on the next call.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

from mergekit_ir.experiments.registry import load_registry
from mergekit_ir.experiments.runner import ExperimentRun, RunOptions, TripletRunner
from mergekit_ir.experiments.sources import domain_input
from mergekit_ir.results import alpha_display, alpha_label
from mergekit_ir.storage.cache import Cache
from mergekit_ir.tuning.bootstrap import bootstrap
from mergekit_ir.tuning.search import SearchSpec, run_search

DEFAULT_RUNS = ["/tmp/mergeir-shootout/runs/*/", "/tmp/evidence/verdict-demo/"]
DEFAULT_DATA = Path("/tmp/mergeir-search-replay/perquery.json")
_DTYPE = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}

#: the settings compared (label, spec)
SETTINGS: list[tuple[str, SearchSpec]] = [
    ("grid", SearchSpec()),
    ("halving", SearchSpec("halving")),
    ("halving, confidence 0.95", SearchSpec("halving", confidence=0.95)),
    ("halving, confidence 0.9", SearchSpec("halving", confidence=0.9)),
    ("halving, keep 1/3", SearchSpec("halving", keep=1 / 3)),
    ("halving, start 0.25", SearchSpec("halving", start=0.25)),
    ("halving, start 0.25, confidence 0.9", SearchSpec("halving", start=0.25, confidence=0.9)),
]


def _no_model(*_: Any, **__: Any) -> Any:
    raise RuntimeError("a replay must not score: this grid point's dev run is not in the cache")


def extract(run_dir: Path) -> list[dict[str, Any]]:
    """Per-query dev objective of every grid point of one finished run (one case per triplet)."""
    results = json.loads((run_dir / "results.json").read_text())
    manifest = results["manifest"]
    reg = load_registry(manifest["registry"])
    name = results["experiment"]
    exp = reg.experiment(name)
    scoring = manifest["scoring"]
    with tempfile.TemporaryDirectory() as tmp:
        opts = RunOptions(
            out_dir=Path(tmp) / "out",
            cache=Cache(Path(manifest["cache"]["dir"])),
            device=scoring["device"],
            dtype=_DTYPE[scoring["dtype"]],
            batch_size=scoring["batch_size"],
            progress=False,
            echo=lambda _line: None,
        )
        er = ExperimentRun(reg, name, opts)
        er.prepare_splits()
        cases = []
        fixed = dict(exp.fusion_params)
        for tname, abl in results["alpha_ablation"].items():
            triplet = reg.triplet(tname)
            for d in triplet.domains:  # an adapt ΘD must be in the cache (no build here)
                domain_input(reg, triplet, d, opts.cache.root, None)
            runner = TripletRunner(exp, triplet, reg, opts, er.timer)
            runner.ir_scorer = runner.load_scorer = _no_model  # type: ignore[method-assign]
            groups: dict[str, dict[str, dict[str, float]]] = {}
            for dname, split in er.devs.items():
                judged = er.judged(split)
                for alpha in exp.alphas:
                    run = runner.merged_ranking(alpha, split)
                    fused = er.fused(split.first_stage, run, fixed)
                    per = er.evaluate(split, fused, [exp.objective])[exp.objective]
                    assert set(per) == set(judged)
                    label = alpha_label(alpha)
                    groups.setdefault(dname, {})[label] = per
                    mean = sum(per.values()) / len(per)
                    reported = abl["values"][dname][label]
                    if abs(mean - reported) > 1e-9:
                        raise SystemExit(
                            f"{run_dir}: {label} on {dname}: replayed {mean} != reported {reported}"
                        )
            cases.append(
                {
                    "run": str(run_dir),
                    "experiment": name,
                    "triplet": tname,
                    "points": [alpha_label(a) for a in exp.alphas],
                    "best": abl["best"],
                    "values": groups,
                    "seed": exp.seed,
                }
            )
    return cases


def _score(case: dict[str, Any]):
    values = case["values"]

    def score(point: str, group: str, qids: list[str]) -> dict[str, float]:
        return {q: values[group][point][q] for q in qids}

    return score


def _queries(case: dict[str, Any]) -> dict[str, list[str]]:
    return {g: sorted(next(iter(v.values()))) for g, v in case["values"].items()}


def _full_curve(case: dict[str, Any]) -> dict[str, float]:
    groups = case["values"]
    return {
        p: sum(sum(groups[g][p].values()) / len(groups[g][p]) for g in groups) / len(groups)
        for p in case["points"]
    }


def replay(cases: list[dict[str, Any]], seeds: int) -> list[str]:
    lines = [
        f"{len(cases)} cases (grid sizes: "
        + ", ".join(f"{n} points × {c} cases" for n, c in _sizes(cases))
        + f"; dev queries: {sorted({sum(len(_queries(c)[g]) for g in c['values']) for c in cases})}),"
        f" {seeds} query orders (seeds) each",
        "",
        "| search | picks the grid's point (case × seed) | cases ≥ 90 % of seeds | "
        "a point as good on dev (regret 0) | evaluations vs grid (mean) | (max) | "
        "mean dev regret | (max) |",
        "|:---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, spec in SETTINGS:
        hits = total = good = equal = 0
        shares: list[float] = []
        regrets: list[float] = []
        for case in cases:
            curve = _full_curve(case)
            grid = run_search(case["points"], _queries(case), _score(case))
            assert grid.chosen == case["best"], (case["experiment"], grid.chosen, case["best"])
            case_hits = 0
            n = 1 if spec.method == "grid" else seeds
            for seed in range(n):
                res = run_search(case["points"], _queries(case), _score(case), spec, seed=seed)
                case_hits += res.chosen == grid.chosen
                shares.append(res.share)
                regrets.append(curve[grid.chosen] - curve[res.chosen])
                equal += regrets[-1] <= 1e-12
            hits += case_hits
            total += n
            good += case_hits >= 0.9 * n
        lines.append(
            f"| {label} | {100 * hits / total:.1f} % | {good}/{len(cases)} | "
            f"{100 * equal / total:.1f} % | "
            f"{100 * sum(shares) / len(shares):.1f} % | {100 * max(shares):.1f} % | "
            f"{sum(regrets) / len(regrets):.4f} | {max(regrets):.4f} |"
        )
    return lines


def per_case(cases: list[dict[str, Any]], seeds: int, spec: SearchSpec) -> list[str]:
    """One row per case for ``spec``: how reproducible the grid's own pick is (the share of
    bootstrap resamples of the dev queries in which it stays the argmax), and the search's
    match rate, cost and regret over the seeds."""
    lines = [
        "",
        f"Per case, {spec.describe()}:",
        "",
        "| case | points | dev queries | grid's point | its bootstrap stability | "
        "same point | evaluations | mean dev regret |",
        "|:---|---:|---:|:---|---:|---:|---:|---:|",
    ]
    for case in cases:
        curve = _full_curve(case)
        queries = _queries(case)
        grid = run_search(case["points"], queries, _score(case))
        groups = case["values"]
        base = {g: groups[g][grid.chosen] for g in groups}
        stability = bootstrap(groups, base, case["points"], grid.chosen, {}, 1000).stability
        runs = [
            run_search(case["points"], queries, _score(case), spec, seed=seed)
            for seed in range(seeds)
        ]
        same = sum(r.chosen == grid.chosen for r in runs) / len(runs)
        cost = sum(r.share for r in runs) / len(runs)
        regret = sum(curve[grid.chosen] - curve[r.chosen] for r in runs) / len(runs)
        name = case["experiment"].removeprefix("shootout-")
        lines.append(
            f"| {name} | {len(case['points'])} | {sum(map(len, queries.values()))} | "
            f"{alpha_display(grid.chosen)} | {100 * stability:.0f} % | {100 * same:.0f} % | "
            f"{100 * cost:.0f} % | {regret:.4f} |"
        )
    return lines


def _sizes(cases: list[dict[str, Any]]) -> list[tuple[int, int]]:
    sizes: dict[int, int] = {}
    for c in cases:
        sizes[len(c["points"])] = sizes.get(len(c["points"]), 0) + 1
    return sorted(sizes.items())


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("runs", nargs="*", help="finished run folders (globs allowed)")
    ap.add_argument("--seeds", type=int, default=200)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--refresh", action="store_true", help="extract again even if --data exists")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.data.is_file() and not args.refresh and not args.runs:
        cases = json.loads(args.data.read_text())
    else:
        dirs = sorted(
            {
                Path(p)
                for pattern in (args.runs or DEFAULT_RUNS)
                for p in glob.glob(pattern)
                if (Path(p) / "results.json").is_file()
            }
        )
        if not dirs:
            sys.exit("no finished run folders (with results.json) found")
        cases = []
        for d in dirs:
            got = extract(d)
            cases += [c for c in got if len(c["points"]) > 1]
            print(f"  {d}: {len(got)} case(s)", file=sys.stderr)
        args.data.parent.mkdir(parents=True, exist_ok=True)
        args.data.write_text(json.dumps(cases))
    if not math.isfinite(args.seeds) or args.seeds < 1:
        sys.exit("--seeds: at least 1")
    print("\n".join(replay(cases, args.seeds)))
    print("\n".join(per_case(cases, args.seeds, SearchSpec("halving"))))


if __name__ == "__main__":
    main()
