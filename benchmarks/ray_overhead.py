"""`--executor ray` vs `local`: what Ray costs and what two workers buy on one machine.

    python benchmarks/ray_overhead.py [--skip-real] [--queries 80] [--repeat 1]

(1) Ray's fixed overhead on the quickstart (fresh cache): `--executor local` vs
    `--executor ray` alone (each run starts and stops its own local cluster) vs
    `--executor ray --address ADDR` on a cluster that is already running (started here
    with ``ray.init(num_cpus=2)``; what a user with `ray start --head` pays per run).
(2) A CPU-bound two-triplet experiment: splade-tiny's BERT-tiny encoder as ΘT with Θ0/ΘD
    perturbed from it (speed only), SciFact test[:N] + an α sweep on train[:N/2], two
    triplets (mean/cosine and cls/dot pooling), `local` vs `--executor ray --workers 2` on
    the running cluster.

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


REPEAT = 1  # runs per variant; the fastest counts (the machine may be shared)


def run(registry: Path, experiment: str, tmp: Path, tag: str, *extra: str) -> tuple[float, dict]:
    walls = [run_once(registry, experiment, tmp, f"{tag}-{i}", *extra) for i in range(REPEAT)]
    return min(walls, key=lambda x: x[0])


def run_once(
    registry: Path, experiment: str, tmp: Path, tag: str, *extra: str
) -> tuple[float, dict]:
    out = tmp / f"out-{tag}"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # --address says where
    cmd = [sys.executable, "-m", "mergekit_ir.cli", "run", experiment, "--registry", str(registry)]
    cmd += ["--out", str(out), "--cache-dir", str(tmp / f"cache-{tag}"), "-q", *extra]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    res = json.loads((out / "results.json").read_text())
    manifest = res.pop("manifest")
    return wall, {"results": res, "summed": sum(manifest["timings"].values())}


def compare(name: str, registry: Path, experiment: str, tmp: Path, *variants: tuple) -> list[str]:
    """One row per executor variant: wall time and its ratio to the local run."""
    local_wall, local = run(registry, experiment, tmp, f"{name}-local", "--executor", "local")
    rows = [f"| {name} | local | {local_wall:.1f} | {local['summed']:.1f} | | 1.00 | |"]
    for label, args in variants:
        wall, res = run(registry, experiment, tmp, f"{name}-{label}", "--executor", "ray", *args)
        same = "identical" if res["results"] == local["results"] else "DIFFERENT"
        rows.append(
            f"| {name} | {label} | {wall:.1f} | {res['summed']:.1f} | {wall - local_wall:+.1f} "
            f"| **{wall / local_wall:.2f}** | {same} |"
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--skip-real", action="store_true", help="only the quickstart")
    ap.add_argument("--queries", type=int, default=80, help="SciFact test queries")
    ap.add_argument("--repeat", type=int, default=1, help="runs per variant (fastest counts)")
    args = ap.parse_args()
    global REPEAT
    REPEAT = args.repeat
    print(
        "| experiment | executor | wall (s) | summed stage time (s) | − local (s) | / local "
        "| results vs local |"
    )
    print("|---|---|---:|---:|---:|---:|---|")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    address = ray.get_runtime_context().gcs_address
    try:
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            rows = compare(
                "quickstart",
                ROOT / "registry.yaml",
                "quickstart",
                tmp,
                ("ray, own cluster", ()),
                ("ray, running cluster", ("--address", address)),
            )
            print("\n".join(rows), flush=True)
            model, beir = SHARED / "models" / "splade-tiny", SHARED / "data" / "beir" / "scifact"
            if args.skip_real or not model.exists() or not beir.exists():
                return
            t = perturbed_triplet(model, tmp / "triplet")
            registry = tmp / "registry.yaml"
            triplet = "pretrained: {pretrained}\n    domain: {domain}\n    ir: {ir}".format(**t)
            n = args.queries
            registry.write_text(f"""
datasets:
  scifact: {{beir: {beir}, test: "test[:{n}]", dev: "train[:{n // 2}]"}}
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
            two = ("ray, 2 workers", ("--address", address, "--workers", "2"))
            print("\n".join(compare("two triplets", registry, "two", tmp, two)))
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
