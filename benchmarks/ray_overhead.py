"""`--executor ray` vs `local`: what Ray costs and what two workers buy on one machine.

    python benchmarks/ray_overhead.py [--skip-real] [--queries 80]

(1) Ray's fixed overhead: wall time of `mergeir run` (the quickstart, fresh cache) with
    `--executor local` vs `--executor ray` (which starts a local cluster, one actor,
    ships the splits and folds the outcome back).
(2) A CPU-bound two-triplet experiment: splade-tiny's BERT-tiny encoder as ΘT with Θ0/ΘD
    perturbed from it (speed only), SciFact test[:N] + an α sweep on train[:N/2], two
    triplets (mean/cosine and cls/dot pooling), with `local` vs `--executor ray --workers 2`.

Each run is a separate process with its own fresh cache; the ratio is ray wall / local wall
in the same invocation (lower is better). Both executors' results.json must agree, which
the script checks.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _triplets import SHARED, perturbed_triplet  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run(registry: Path, experiment: str, tmp: Path, tag: str, *extra: str) -> tuple[float, dict]:
    out = tmp / f"out-{tag}"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    cmd = [sys.executable, "-m", "mergekit_ir.cli", "run", experiment, "--registry", str(registry)]
    cmd += ["--out", str(out), "--cache-dir", str(tmp / f"cache-{tag}"), "-q", *extra]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    res = json.loads((out / "results.json").read_text())
    manifest = res.pop("manifest")
    return wall, {"results": res, "summed": sum(manifest["timings"].values())}


def compare(name: str, registry: Path, experiment: str, tmp: Path, *ray_args: str) -> str:
    local_wall, local = run(registry, experiment, tmp, f"{name}-local", "--executor", "local")
    ray_wall, ray = run(registry, experiment, tmp, f"{name}-ray", "--executor", "ray", *ray_args)
    same = "identical" if local["results"] == ray["results"] else "DIFFERENT"
    return (
        f"| {name} | {local_wall:.1f} | {ray_wall:.1f} | {ray['summed']:.1f} | "
        f"{ray_wall - local_wall:+.1f} | **{ray_wall / local_wall:.2f}** | {same} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--skip-real", action="store_true", help="only the quickstart")
    ap.add_argument("--queries", type=int, default=80, help="SciFact test queries")
    args = ap.parse_args()
    print(
        "| experiment | local wall (s) | ray wall (s) | ray summed stage time (s) | ray − local (s) "
        "| ray / local | results |"
    )
    print("|---|---:|---:|---:|---:|---:|---|")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        print(
            compare("quickstart, 1 worker", ROOT / "registry.yaml", "quickstart", tmp), flush=True
        )
        model, beir = SHARED / "models" / "splade-tiny", SHARED / "data" / "beir" / "scifact"
        if args.skip_real or not model.exists() or not beir.exists():
            return
        t = perturbed_triplet(model, tmp / "triplet")
        registry = tmp / "registry.yaml"
        triplet = "pretrained: {pretrained}\n    domain: {domain}\n    ir: {ir}".format(**t)
        registry.write_text(f"""
datasets:
  scifact: {{beir: {beir}, test: "test[:{args.queries}]", dev: "train[:{args.queries // 2}]"}}
triplets:
  tiny-mean:
    scorer: {{kind: bi-encoder, pooling: mean, similarity: cosine, max_length: 256}}
    {triplet}
  tiny-cls:
    scorer: {{kind: bi-encoder, pooling: cls, similarity: dot, max_length: 256}}
    {triplet}
experiments:
  two:
    triplets: [tiny-mean, tiny-cls]
    datasets: [scifact]
    merge: {{method: task_arithmetic, alpha: [0.25, 0.5, 0.75, 1.0]}}
    scoring: {{batch_size: 64}}
""")
        print(compare("two triplets, 2 workers", registry, "two", tmp, "--workers", "2"))


if __name__ == "__main__":
    main()
