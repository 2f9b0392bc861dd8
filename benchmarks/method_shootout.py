"""Run the merge-method shoot-out and pool its runs into one table and one plot.

    python benchmarks/method_shootout.py run   [--only EXP ...] [--root /tmp/mergeir-shootout]
    python benchmarks/method_shootout.py table [--root /tmp/mergeir-shootout] [--plot PNG]
    # NFCorpus (ΘD adapted on NFCorpus), or the full protocol on a GPU:
    python benchmarks/method_shootout.py run --target nfcorpus
    python benchmarks/method_shootout.py run --protocol full --device cuda --no-lock

``run`` runs every experiment of ``benchmarks/method_shootout.yaml`` (or ``--only`` these) in
sequence, each as its own ``mergeir run`` under the shared heavy-job lock
(``flock /tmp/mergeir-heavy.lock``; one lock hold per method, so no hold is long), all with one
cache (``ROOT/cache``: ΘT, Θ0, ΘD, BM25 and ΘD's adaptation are computed once) and each into
``ROOT/runs/EXP``. A finished run (its ``results.json`` exists) is skipped unless ``--force``.
Wall times go to ``ROOT/timings.json``.

``--target scifact`` (default) runs the YAML as written: triplet ``minilm-shared-sci`` on
``scifact-s``. ``--target nfcorpus`` and ``--protocol full`` run a registry derived from it and
written to ``ROOT/method_shootout.<target>-<protocol>.yaml`` (paths made absolute): the same
experiments with triplet ``minilm-shared-nf`` on ``nfcorpus-*`` for NFCorpus, and for the full
protocol every test query (``scifact-full`` / ``nfcorpus-full``: dev as the paper), BM25 top
100, documents up to the model's own limit (256 tokens) and the full grids (:data:`FULL_GRIDS`). Their runs go to ``ROOT/runs-<target>-<protocol>``.

``table`` reads every run's ``results.json`` and prints one Markdown row per method: the tuned
grid point (chosen on dev), its dev NDCG@10, test NDCG@10 and Δ vs ΘT with the paired t-test's
p (the run's verdict against ΘT), P@10 Δ, Θ'(α = 1) at the method's defaults, and whether the
tuned row is significant after **Bonferroni over the methods** (p < max_p / m, m = the number of
methods in the table). It writes the table to ``ROOT/shootout.md`` and a bar plot of the test Δ
(tuned and α = 1) to ``--plot`` (default ``ROOT/shootout.png``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REGISTRY = HERE / "method_shootout.yaml"
LOCK = "/tmp/mergeir-heavy.lock"
PREFIX = "shootout-"

#: how α maps onto each built-in method (docs/merge-methods.md)
FAMILY = {
    **dict.fromkeys(
        [
            "task_arithmetic",
            "ties",
            "dare_ties",
            "dare_linear",
            "magnitude_prune",
            "breadcrumbs",
            "breadcrumbs_ties",
            "della",
            "della_linear",
            "sce",
        ],
        "scale",
    ),
    **dict.fromkeys(["linear", "slerp", "nuslerp", "multislerp", "karcher"], "share"),
    **dict.fromkeys(
        ["model_stock", "ram", "ramplus_tl", "nearswap", "arcee_fusion", "tsv_m", "iso_c"]
        + ["iso_cts", "wudi"],
        "toward",
    ),
    "regmean": "share",
}


#: the full protocol's grids (GPU): α as the paper (0.1 … 1), the key parameter wider
ALPHA_FULL = {
    "scale": [round(0.1 * i, 1) for i in range(1, 11)],
    "share": [round(0.1 * i, 1) for i in range(1, 10)],
    "toward": [round(0.1 * i, 1) for i in range(1, 11)],
}
FULL_GRIDS = {
    "ties": {"density": [0.1, 0.3, 0.5, 0.7, 0.9]},
    "dare_ties": {"density": [0.1, 0.3, 0.5, 0.7, 0.9]},
    "dare_linear": {"density": [0.1, 0.3, 0.5, 0.7, 0.9]},
    "magnitude_prune": {"density": [0.1, 0.3, 0.5, 0.7, 0.9]},
    "breadcrumbs": {"density": [0.5, 0.7, 0.9], "gamma": [0.01, 0.05]},
    "breadcrumbs_ties": {"density": [0.5, 0.7, 0.9], "gamma": [0.01, 0.05]},
    "della": {"density": [0.3, 0.5, 0.7], "epsilon": [0.1, 0.2]},
    "della_linear": {"density": [0.3, 0.5, 0.7], "epsilon": [0.1, 0.2]},
    "sce": {"select_topk": [0.1, 0.3, 0.5, 1.0]},
    "ram": {"epsilon": [1e-6, 1e-5, 1e-4]},
    "ramplus_tl": {"epsilon": [1e-5, 1e-4], "r": [0.1, 0.5]},
    "nearswap": {"t": [3e-5, 1e-4, 3e-4, 1e-3]},
    "tsv_m": {"scaling_factor": [1.0, 1.5, 2.0]},
    "iso_c": {"scaling_factor": [1.0, 1.5, 2.0]},
    "iso_cts": {"scaling_factor": [1.0, 1.5, 2.0], "common_space_fraction": [0.6, 0.8]},
    "wudi": {"scaling_factor": [1.0, 1.5]},
    "regmean": {"off_diagonal": [0.0, 0.5, 0.9, 1.0]},
}
TARGETS = {
    "scifact": ("minilm-shared-sci", "scifact"),
    "nfcorpus": ("minilm-shared-nf", "nfcorpus"),
    # the splade-tiny adapted triplet (Θ0 = ΘT: no public base), ΘD adapted on SciFact
    "splade-scifact": ("splade-adapted-sci", "scifact"),
    # ... and ΘD adapted on NFCorpus
    "splade-nfcorpus": ("splade-adapted-nf", "nfcorpus"),
}


def dataset_name(target: str, protocol: str) -> str:
    return f"{TARGETS[target][1]}-{'s' if protocol == 'reduced' else 'full'}"


def runs_dir(root: Path, target: str, protocol: str) -> Path:
    if (target, protocol) == ("scifact", "reduced"):
        return root / "runs"
    return root / f"runs-{target}-{protocol}"


def derived_registry(registry: Path, root: Path, target: str, protocol: str) -> Path:
    """The shoot-out's YAML for another target collection and/or the full protocol."""
    import copy

    import yaml

    if (target, protocol) == ("scifact", "reduced"):
        return registry
    base = registry.resolve().parent
    raw = yaml.safe_load(registry.read_text(encoding="utf-8"))

    def absolute(p: str) -> str:
        return p if os.path.isabs(p) or not (base / p).exists() else str((base / p).resolve())

    for d in raw["datasets"].values():
        if "beir" in d:
            d["beir"] = absolute(d["beir"])
    for t in raw["triplets"].values():
        for key in ("pretrained", "ir"):
            if isinstance(t.get(key), str):
                t[key] = absolute(t[key])
        if protocol == "full":  # whole documents: the model's own max_seq_length (256)
            t.get("scorer", {}).pop("max_length", None)
    triplet, dataset = TARGETS[target][0], dataset_name(target, protocol)
    exps = {}
    for name, exp in raw["experiments"].items():
        exp = copy.deepcopy(exp)  # no shared (aliased) values in the output
        exp["triplets"], exp["datasets"] = [triplet], [dataset]
        if protocol == "full":
            method = exp["merge"]["method"]
            exp["first_stage"]["k"] = 100
            exp["merge"] = {  # fixed settings (e.g. RegMean's statistics) kept
                **exp["merge"],
                "alpha": ALPHA_FULL[FAMILY[method]],
                **FULL_GRIDS.get(method, {}),
            }
            exp["scoring"] = {"batch_size": 256}
        exps[name] = exp
    raw["experiments"] = exps
    out = root / f"method_shootout.{target}-{protocol}.yaml"
    root.mkdir(parents=True, exist_ok=True)

    class NoAliases(yaml.SafeDumper):
        def ignore_aliases(self, data):  # noqa: ANN001, ANN201
            return True

    out.write_text(
        f"# derived from {registry} by benchmarks/method_shootout.py ({target}, {protocol})\n"
        + yaml.dump(raw, Dumper=NoAliases, sort_keys=False, allow_unicode=True),
        encoding="utf-8",
    )
    return out


def experiments(registry: Path) -> list[str]:
    from mergekit_ir.experiments.registry import load_registry

    return [e for e in load_registry(registry).experiments if e.startswith(PREFIX)]


def cmd_run(args: argparse.Namespace) -> None:
    root: Path = args.root
    registry = derived_registry(args.registry, root, args.target, args.protocol)
    names = args.only or experiments(registry)
    runs = runs_dir(root, args.target, args.protocol)
    timings_path = runs / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    for name in names:
        out = runs / name
        if (out / "results.json").is_file() and not args.force:
            print(f"{name}: done, skipped ({out})", flush=True)
            continue
        cmd = [
            *([] if args.no_lock else ["flock", LOCK]),
            "mergeir",
            "run",
            name,
            "--registry",
            str(registry),
            "--out",
            str(out),
            "--cache-dir",
            str(root / "cache"),
            "--device",
            args.device,
            "-q",
        ]
        print(f"{name}: {' '.join(cmd)}", flush=True)
        t0 = time.time()
        rc = subprocess.call(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        wall = time.time() - t0
        print(f"{name}: exit {rc}, {wall:.0f} s (lock wait included)", flush=True)
        timings[name] = {"rc": rc, "wall_s": round(wall, 1), "finished": time.strftime("%H:%M:%S")}
        runs.mkdir(parents=True, exist_ok=True)
        timings_path.write_text(json.dumps(timings, indent=2) + "\n")
        if rc != 0 and not args.keep_going:
            sys.exit(rc)


def _cell(section: dict, key: str, dataset: str, metric: str) -> float | None:
    for row in section["rows"]:
        if row["key"] == key:
            c = row["cells"].get(dataset, {}).get(metric)
            return c["mean"] if c else None
    return None


def _verdict(section: dict, candidate: str, dataset: str, metric: str) -> dict | None:
    for v in section.get("verdicts", []):
        if (v["candidate"], v["against"], v["dataset"], v["metric"]) == (
            candidate,
            "theta_t",
            dataset,
            metric,
        ):
            return v
    return None


def _point(label: str) -> str:
    from mergekit_ir.results import alpha_display

    return alpha_display(label)


def collect(runs: Path, names: list[str], dataset: str) -> list[dict]:
    rows = []
    for name in names:
        path = runs / name / "results.json"
        if not path.is_file():
            continue
        res = json.loads(path.read_text())
        method = name[len(PREFIX) :] if name.startswith(PREFIX) else name
        for section in res["sections"]:
            if dataset not in res["datasets"]:
                continue
            abl = res.get("alpha_ablation", {}).get(section["triplet"], {})
            best_label = abl.get("best")
            dev = abl.get("values", {}).get(dataset, {})
            refs = abl.get("references", {}).get(dataset, {})
            vt = _verdict(section, "merged@best", dataset, "NDCG@10")
            vp = _verdict(section, "merged@best", dataset, "P@10")
            v1 = _verdict(section, "merged@1", dataset, "NDCG@10")
            rows.append(
                {
                    "method": method,
                    "family": FAMILY.get(method, "?"),
                    "triplet": section["triplet"],
                    "point": _point(best_label) if best_label else "–",
                    "dev_best": dev.get(best_label),
                    "dev_theta_t": refs.get("ΘT"),
                    "dev_curve": {_point(k): v for k, v in dev.items()},
                    "theta_t": _cell(section, "ir", dataset, "NDCG@10"),
                    "theta_0": _cell(section, "pretrained", dataset, "NDCG@10"),
                    "theta_d": _cell(section, "domain", dataset, "NDCG@10"),
                    "bm25": _cell(section, "bm25", dataset, "NDCG@10"),
                    "tuned": vt["candidate_mean"] if vt else None,
                    "delta": vt["delta"] if vt else None,
                    "p": vt["p_value"] if vt else None,
                    "p10_delta": vp["delta"] if vp else None,
                    "p10_p": vp["p_value"] if vp else None,
                    "at1": v1["candidate_mean"] if v1 else None,
                    "at1_delta": v1["delta"] if v1 else None,
                    "at1_p": v1["p_value"] if v1 else None,
                    "max_p": (section.get("significance") or {}).get("max_p", 0.01),
                    "timings": res.get("manifest", {}).get("timings", {}),
                }
            )
    return rows


def render(rows: list[dict], dataset: str) -> str:
    m = len(rows)
    max_p = rows[0]["max_p"] if rows else 0.01
    thr = max_p / max(m, 1)
    ref = rows[0] if rows else {}
    f = lambda x, s="": "–" if x is None else format(x, s or ".4f")  # noqa: E731
    out = [
        f"**{dataset}**, triplet `{ref.get('triplet', '')}`: test NDCG@10 (fused with BM25) — "
        f"BM25 {f(ref.get('bm25'))}, Θ0 {f(ref.get('theta_0'))}, ΘD {f(ref.get('theta_d'))}, "
        f"**ΘT {f(ref.get('theta_t'))}** (dev: ΘT {f(ref.get('dev_theta_t'))}). "
        f"Bonferroni over m = {m} methods: significant at p < {max_p:g}/{m} = {thr:.2g}.",
        "",
        "| method | α mapping | tuned point (dev) | dev NDCG@10 | test NDCG@10 | Δ vs ΘT | p | "
        "P@10 Δ (p) | Θ'(α=1) Δ (p) | Bonferroni-significant? |",
        "|:---|:---|:---|---:|---:|---:|---:|---:|---:|:---|",
    ]
    for r in sorted(rows, key=lambda r: -(r["delta"] if r["delta"] is not None else -9)):
        sig = r["p"] is not None and r["p"] < thr and r["delta"] != 0
        verdict = ("**yes, better**" if r["delta"] > 0 else "**yes, worse**") if sig else "no"
        out.append(
            f"| `{r['method']}` | {r['family']} | {r['point']} | {f(r['dev_best'])} | "
            f"{f(r['tuned'])} | {f(r['delta'], '+.4f')} | {f(r['p'], '.3g')} | "
            f"{f(r['p10_delta'], '+.3f')} ({f(r['p10_p'], '.2g')}) | "
            f"{f(r['at1_delta'], '+.4f')} ({f(r['at1_p'], '.2g')}) | {verdict} |"
        )
    return "\n".join(out) + "\n"


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: r["delta"] if r["delta"] is not None else -9)
    colours = {"scale": "tab:blue", "share": "tab:orange", "toward": "tab:green", "?": "grey"}
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(rows) + 1.4), dpi=90)
    ys = range(len(rows))
    ax.barh(
        list(ys),
        [r["delta"] or 0 for r in rows],
        color=[colours[r["family"]] for r in rows],
        height=0.6,
    )
    ax.scatter(
        [r["at1_delta"] or 0 for r in rows], list(ys), marker="x", color="black", zorder=3, s=18
    )
    ax.set_yticks(list(ys))
    ax.set_yticklabels([f"{r['method']} ({r['point']})" for r in rows], fontsize=7)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("test NDCG@10 − ΘT (fused with BM25)")
    ax.set_title(title, fontsize=9)
    from matplotlib.lines import Line2D

    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[k]) for k in ("scale", "share", "toward")]
    handles.append(Line2D([], [], marker="x", color="black", ls="none"))
    ax.legend(
        handles,
        [
            "tuned on dev: scale",
            "tuned on dev: share",
            "tuned on dev: toward",
            "α = 1, method defaults",
        ],
        fontsize=7,
        loc="best",
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def cmd_table(args: argparse.Namespace) -> None:
    registry = derived_registry(args.registry, args.root, args.target, args.protocol)
    names = args.only or experiments(registry)
    runs = runs_dir(args.root, args.target, args.protocol)
    dataset = dataset_name(args.target, args.protocol)
    rows = collect(runs, names, dataset)
    if not rows:
        sys.exit(f"no finished run under {runs}")
    text = render(rows, dataset)
    print(text)
    md = runs / "shootout.md"
    md.write_text(text)
    png = args.plot or runs / "shootout.png"
    plot(rows, png, f"{dataset}: {len(rows)} merge methods vs ΘT (tuned point on dev)")
    print(f"wrote {md} and {png}")
    t = json.loads((runs / "timings.json").read_text()) if (runs / "timings.json").is_file() else {}
    print(
        "\n| method | grid points | run total (s) | loading | merge | scoring | wall incl. lock wait (s) |"
    )
    print("|:---|---:|---:|---:|---:|---:|---:|")
    tot = {"total": 0.0, "wall": 0.0}
    for r in rows:
        tm = r["timings"]
        total = sum(tm.values())
        wall = t.get(f"{PREFIX}{r['method']}", {}).get("wall_s")
        tot["total"] += total
        tot["wall"] += wall or 0
        print(
            f"| {r['method']} | {len(r['dev_curve'])} | {total:.0f} | {tm.get('loading', 0):.0f} | "
            f"{tm.get('merge', 0):.0f} | {tm.get('scoring', 0):.0f} | "
            f"{'–' if wall is None else f'{wall:.0f}'} |"
        )
    print(
        f"| **all** | | {tot['total']:.0f} ({tot['total'] / 60:.1f} min) | | | | "
        f"{tot['wall']:.0f} ({tot['wall'] / 60:.1f} min) |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("run", "table"):
        p = sub.add_parser(name)
        p.add_argument("--registry", type=Path, default=REGISTRY)
        p.add_argument("--root", type=Path, default=Path("/tmp/mergeir-shootout"))
        p.add_argument("--only", nargs="*", help="these experiments only (default: shootout-*)")
        p.add_argument(
            "--target",
            choices=sorted(TARGETS),
            default="scifact",
            help="scifact: the MiniLM shared-base triplet, ΘD adapted on SciFact, tested on it; "
            "nfcorpus: the same for NFCorpus; splade-scifact / splade-nfcorpus: the splade-tiny "
            "adapted triplet, ΘD adapted on SciFact / NFCorpus",
        )
        p.add_argument(
            "--protocol",
            choices=["reduced", "full"],
            default="reduced",
            help="reduced (the YAML's, 2 CPUs) or full (every test query, k=100, full grids)",
        )
        if name == "run":
            p.add_argument("--device", default="cpu")
            p.add_argument("--force", action="store_true", help="rerun finished experiments")
            p.add_argument("--keep-going", action="store_true", help="go on after a failed run")
            p.add_argument(
                "--no-lock",
                action="store_true",
                help=f"do not wrap each run in flock {LOCK} (a machine of your own)",
            )
        else:
            p.add_argument("--plot", type=Path, default=None)
    args = ap.parse_args()
    {"run": cmd_run, "table": cmd_table}[args.cmd](args)


if __name__ == "__main__":
    main()
