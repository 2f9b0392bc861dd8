"""α-sweep cost: in-place sweep vs merge-to-disk + load + score per α.

    python benchmarks/alpha_sweep.py [--model ../shared/models/all-MiniLM-L6-v2] [--queries 30]

Baseline (same run): for each α, `merge_to_folder` + load the scorer + re-rank. Ours: load
ΘT and τ once, then per α update the weights in place and re-rank. Reports the sweep's
overhead beyond scoring (goal < 5 %) and the speed-up over the baseline.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _triplets import SHARED, perturbed_triplet  # noqa: E402

from mergekit_ir.evaluation.datasets import load_beir_folder  # noqa: E402
from mergekit_ir.merging.checkpoint import open_checkpoint  # noqa: E402
from mergekit_ir.merging.engine import MergeJob, build_plan, merge_to_folder  # noqa: E402
from mergekit_ir.merging.sweep import InPlaceSweep  # noqa: E402
from mergekit_ir.merging.task_vector import TaskVector  # noqa: E402
from mergekit_ir.params import check_params  # noqa: E402
from mergekit_ir.plugin_host import catalog  # noqa: E402
from mergekit_ir.scoring.scorer import ScoringSettings  # noqa: E402

ALPHAS = [round(0.1 * i, 1) for i in range(1, 11)]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", type=Path, default=SHARED / "models" / "all-MiniLM-L6-v2")
    ap.add_argument("--data", type=Path, default=SHARED / "data" / "beir" / "scifact")
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    if not args.model.exists() or not args.data.exists():
        sys.exit(f"needs {args.model} and {args.data}")
    cat = catalog()
    kind, method = cat.scorer("bi-encoder"), cat.merge_method("task_arithmetic")
    settings = ScoringSettings(device=args.device, batch_size=64, show_progress=False)
    ds = load_beir_folder(args.data, f"test[:{args.queries}]")
    fs = cat.first_stage("bm25s")
    run = fs.build(ds.corpus, check_params(fs.params, {}, "bm25s", "bm25s"), None).search(
        ds.queries, args.k
    )
    docs = {d: ds.corpus[d].full_text for q in run.values() for d in q}

    with tempfile.TemporaryDirectory() as tmp:
        t = perturbed_triplet(args.model, Path(tmp))
        pre = open_checkpoint(str(t["pretrained"]))

        def job() -> MergeJob:
            return MergeJob(
                open_checkpoint(str(t["ir"])),
                [TaskVector.from_checkpoints(pre, open_checkpoint(str(t["domain"])))],
                method,
                {"alpha": 1.0, "weights": None},
                pretrained=pre,
            )

        # baseline: merge to disk + load + score, per α
        base_total, base_scoring = time.perf_counter(), 0.0
        for a in ALPHAS:
            j = job()
            j.params["alpha"] = a
            merge_to_folder(j, Path(tmp) / "merged", overwrite=True, progress=False)
            scorer = kind.load(Path(tmp) / "merged", {}, settings)
            s = time.perf_counter()
            scorer.rerank(ds.queries, run, docs)
            base_scoring += time.perf_counter() - s
        base_total = time.perf_counter() - base_total

        # ours: load once, update in place
        ours_total, ours_scoring, ours_update = time.perf_counter(), 0.0, 0.0
        scorer = kind.load(t["ir"], {}, settings)
        j = job()
        sweep = InPlaceSweep(scorer.model, j, build_plan(j))
        setup = time.perf_counter() - ours_total
        for a in ALPHAS:
            s = time.perf_counter()
            sweep.apply({"alpha": a})
            ours_update += time.perf_counter() - s
            s = time.perf_counter()
            scorer.rerank(ds.queries, run, docs)
            ours_scoring += time.perf_counter() - s
        ours_total = time.perf_counter() - ours_total

    pairs = sum(len(v) for v in run.values())
    print(
        f"model {args.model.name}, {len(ds.queries)} queries × top-{args.k} ({pairs} pairs, {len(docs)} docs), "
        f"10-point α sweep, device {settings.torch_device}\n"
    )
    print("| approach | total (s) | scoring (s) | overhead beyond scoring |")
    print("|---|---:|---:|---:|")
    print(
        f"| merge to disk + load + score per α (baseline) | {base_total:.2f} | {base_scoring:.2f} | "
        f"{100 * (base_total - base_scoring) / base_scoring:.1f} % |"
    )
    print(
        f"| in-place sweep (ours) | {ours_total:.2f} | {ours_scoring:.2f} | "
        f"{100 * (ours_total - ours_scoring) / ours_scoring:.1f} % |"
    )
    print(
        f"\nin-place: one-off setup (load ΘT + read τ) {setup:.2f} s, weight update {1000 * ours_update / len(ALPHAS):.0f} ms per α "
        f"({100 * ours_update / ours_scoring:.2f} % of scoring)"
    )
    print(f"speed-up over baseline: {base_total / ours_total:.2f}×; sweep overhead goal < 5 %")


if __name__ == "__main__":
    main()
