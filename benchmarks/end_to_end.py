"""End-to-end wall time of `mergeir run`, broken down by stage.

    python benchmarks/end_to_end.py [--skip-real]

Runs (1) the embedded quickstart and (2) SciFact + NFCorpus (test, with their dev splits for
the α sweep) with a tiny real-vocabulary model: splade-tiny's BERT-tiny encoder as ΘT, with
Θ0/ΘD made by perturbing it (speed only; the numbers are not effectiveness claims). Each run
uses a fresh cache, so every stage does its work. The goal: stages other than scoring
together < 10 % of the total.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _triplets import SHARED, perturbed_triplet  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run(registry: Path, experiment: str, tmp: Path) -> dict[str, float]:
    out = tmp / f"out-{experiment}"
    env = {**os.environ, "MERGEIR_CACHE": str(tmp / f"cache-{experiment}")}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "mergekit_ir.cli",
            "run",
            experiment,
            "--registry",
            str(registry),
            "--out",
            str(out),
            "-q",
        ],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    return json.loads((out / "results.json").read_text())["manifest"]["timings"]


def table(name: str, timings: dict[str, float]) -> str:
    total = sum(timings.values())
    other = total - timings.get("scoring", 0.0)
    rows = [f"| {k} | {v:.1f} | {100 * v / total:.1f} % |" for k, v in timings.items()]
    return "\n".join(
        [
            f"**{name}** — total {total:.1f} s, non-scoring stages {100 * other / total:.1f} %\n",
            "| stage | seconds | share |",
            "|---|---:|---:|",
            *rows,
            "",
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--skip-real", action="store_true", help="only the quickstart")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        print(table("quickstart", run(ROOT / "registry.yaml", "quickstart", tmp)))
        model, beir = SHARED / "models" / "splade-tiny", SHARED / "data" / "beir"
        if args.skip_real or not model.exists() or not beir.exists():
            return
        t = perturbed_triplet(model, tmp / "triplet")
        registry = tmp / "registry.yaml"
        registry.write_text(f"""
datasets:
  scifact: {{beir: {beir / "scifact"}, test: test, dev: "train[:20%]"}}
  nfcorpus: {{beir: {beir / "nfcorpus"}, test: test, dev: dev}}
triplets:
  bert-tiny:
    scorer: {{kind: bi-encoder, pooling: mean, similarity: cosine, max_length: 256}}
    pretrained: {t["pretrained"]}
    domain: {t["domain"]}
    ir: {t["ir"]}
experiments:
  scifact-nfcorpus:
    triplets: [bert-tiny]
    datasets: [scifact, nfcorpus]
    scoring: {{batch_size: 64}}
""")
        print(
            table("SciFact + NFCorpus, BERT-tiny triplet", run(registry, "scifact-nfcorpus", tmp))
        )


if __name__ == "__main__":
    main()
