"""Do sentence-transformers' compiled backends load what `mergeir export` writes?

    python benchmarks/st_backends.py [--workdir /tmp/mergeir-st-backends] [--venvs DIR]

`mergeir export --to onnx|openvino` writes `onnx/model.onnx` and `openvino/openvino_model.xml`
where sentence-transformers looks for them. Loading them with `backend="onnx"` / `"openvino"`
needs Optimum, which does not fit the dev extra (it pins an older transformers /
huggingface-hub), so this script builds one virtual environment per backend under
``--venvs`` (default ``~/.cache/mergekit-ir/oracle-venvs``; built once, reused; needs the
package index, ~2 min each):

- ``st-openvino``: sentence-transformers 6.3 + ``optimum-intel[openvino]`` 2.2 (transformers
  5.5), the version the dev extra installs;
- ``st-onnx``: sentence-transformers **5.7** + ``optimum-onnx[onnxruntime]`` 0.1 (transformers
  4.57). sentence-transformers 6.3's own ``[onnx]`` extra cannot be installed today:
  ``optimum-onnx`` 0.1.0 requires ``transformers<4.58`` and sentence-transformers 6.3 requires
  ``transformers>=5``; the 5.7 loader looks for the same ``onnx/model.onnx``.

Both get the CPU torch the dev venv has (pip takes the local wheel). Models (real weights from
``../shared/models``; skipped when absent): all-MiniLM-L6-v2 as a bi-encoder
(``SentenceTransformer``), a cross-encoder made of MiniLM's layers and a seeded classification
head (``CrossEncoder``), splade-tiny (``SparseEncoder``). Each is exported with
``mergeir export --to openvino`` (which writes the ONNX graph too) and ``--to onnx --int8``;
then, inside each oracle venv, the backend's outputs are compared with the same library's torch
backend on fixed texts: embeddings (bi-encoder), logits (cross-encoder), sparse term weights
(SPLADE). Torch-backend equality with our scorer is tests/test_sentence_transformers.py's job
(1e-5). Results: ``WORKDIR/st_backends.json`` and a Markdown table on stdout (docs/export.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODELS = HERE.parent.parent / "shared" / "models"
VENVS = {
    "st-openvino": ["sentence-transformers==6.3.0", "optimum-intel[openvino]==2.2.0"],
    "st-onnx": ["sentence-transformers==5.7.0", "optimum-onnx[onnxruntime]==0.1.0"],
}
QUERIES = ["what causes cancer cells to divide", "effects of vitamin d on bone density"]
DOCS = [
    "Tumour cells divide without the signals that stop normal cells.",
    "Vitamin D supplementation increased bone mineral density in older adults.",
    "The river flooded the valley in spring.",
]

#: the child: runs inside an oracle venv, prints one JSON line
CHILD = r"""
import json, sys
import numpy as np
kind, folder, backend, file_name = sys.argv[1:5]
queries, docs = json.loads(sys.argv[5]), json.loads(sys.argv[6])
import sentence_transformers as st
kw = {"model_kwargs": {"file_name": file_name}} if file_name != "-" else {}
def load(b, **k):
    cls = {"bi-encoder": st.SentenceTransformer, "cross-encoder": st.CrossEncoder,
           "splade": getattr(st, "SparseEncoder", None)}[kind]
    return cls(folder, backend=b, device="cpu", **k)
def outputs(m):
    if kind == "cross-encoder":
        return np.asarray(m.predict([(q, d) for q in queries for d in docs]), dtype=np.float64)
    if kind == "splade":
        e = m.encode(queries + docs, convert_to_tensor=True)
        return e.to_dense().double().numpy()
    return np.asarray(m.encode(queries + docs), dtype=np.float64)
ref, got = outputs(load("torch")), outputs(load(backend, **kw))
if kind == "cross-encoder":
    order = lambda s: [np.argsort(-s.reshape(len(queries), -1)[i]).tolist() for i in range(len(queries))]
    agree = order(ref) == order(got)
    cos = 1.0
else:
    num = (ref * got).sum(1); den = np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1)
    cos = float((num / np.maximum(den, 1e-12)).min()); agree = None
print(json.dumps({"sentence_transformers": st.__version__, "max_abs_diff": float(abs(ref - got).max()),
                  "min_cosine": cos, "same_order": agree,
                  "class": type(load(backend, **kw)).__name__}))
"""


def ensure_venv(root: Path, name: str) -> Path:
    """Build (once) the oracle venv ``name``; return its python."""
    import torch

    reqs = [f"torch=={torch.__version__.split('+')[0]}", *VENVS[name]]
    tag = hashlib.sha256("\n".join(reqs).encode()).hexdigest()[:12]
    venv = root / name
    python = venv / "bin" / "python"
    marker = venv / f".built-{tag}"
    if marker.is_file():
        return python
    shutil.rmtree(venv, ignore_errors=True)
    print(f"building {venv} ({', '.join(reqs)}) …", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, reqs[0]], check=True)  # the CPU wheel first, as the README says
    subprocess.run([*pip, *reqs], check=True)
    # the index's torchvision is built for another torch; nothing here needs it
    subprocess.run([str(python), "-m", "pip", "uninstall", "-q", "-y", "torchvision"], check=False)
    marker.write_text("\n".join(reqs) + "\n")
    return python


def build_cross_encoder(out: Path) -> Path:
    """MiniLM's layers with a seeded one-logit head, saved as a CrossEncoder folder."""
    if (out / "config.json").is_file():
        return out
    import torch
    from sentence_transformers import CrossEncoder

    torch.manual_seed(0)
    CrossEncoder(str(MODELS / "all-MiniLM-L6-v2"), num_labels=1, device="cpu").save(str(out))
    return out


def export(model: Path, out: Path, *args: str) -> str | None:
    """Export; None when done, else the command's one-line refusal (int8 may be refused)."""
    if (out / "onnx" / "export.json").is_file():
        return None
    cmd = ["mergeir", "export", str(model), *args, "--out", str(out)]
    print(" ".join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    print(proc.stdout + proc.stderr, end="", flush=True)
    if proc.returncode != 0:
        return (proc.stderr.strip().splitlines() or ["?"])[-1]
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/mergeir-st-backends"))
    ap.add_argument(
        "--venvs", type=Path, default=Path.home() / ".cache" / "mergekit-ir" / "oracle-venvs"
    )
    args = ap.parse_args()
    if not (MODELS / "all-MiniLM-L6-v2").is_dir() or not (MODELS / "splade-tiny").is_dir():
        sys.exit(f"skipped: real weights not found under {MODELS}")
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    models = {
        "bi-encoder": MODELS / "all-MiniLM-L6-v2",
        "cross-encoder": build_cross_encoder(work / "minilm-cross-encoder"),
        "splade": MODELS / "splade-tiny",
    }
    rows = []
    for kind, model in models.items():
        ov, q8 = work / f"{kind}-openvino", work / f"{kind}-onnx-int8"
        refused = export(model, ov, "--to", "openvino")
        if refused:
            sys.exit(f"{kind}: mergeir export --to openvino failed: {refused}")
        refused_int8 = export(model, q8, "--to", "onnx", "--int8")
        cases = [
            ("st-openvino", ov, "openvino", "-"),
            ("st-onnx", ov, "onnx", "-"),
            ("st-onnx", q8, "onnx", "model_qint8_avx512_vnni.onnx"),
        ]
        for venv, folder, backend, file_name in cases:
            if folder == q8 and refused_int8:  # the export's own quality check said no
                rows.append({"kind": kind, "venv": venv, "backend": backend, "file": file_name})
                rows[-1]["error"] = f"mergeir export --int8 refused: {refused_int8}"
                print(json.dumps(rows[-1]), flush=True)
                continue
            python = ensure_venv(args.venvs, venv)
            t0 = time.time()
            proc = subprocess.run(
                [str(python), "-c", CHILD, kind, str(folder), backend, file_name]
                + [json.dumps(QUERIES), json.dumps(DOCS)],
                capture_output=True,
                text=True,
                env={**os.environ, "HF_HUB_OFFLINE": "1"},
            )
            row = {"kind": kind, "venv": venv, "backend": backend, "file": file_name}
            if proc.returncode == 0:
                row |= json.loads(proc.stdout.strip().splitlines()[-1])
            else:
                row["error"] = (proc.stderr.strip().splitlines() or ["?"])[-1][:300]
            row["seconds"] = round(time.time() - t0, 1)
            print(json.dumps(row), flush=True)
            rows.append(row)
    (work / "st_backends.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(
        "\n| kind | sentence-transformers | backend | file | loads | max abs diff vs torch "
        "| min cosine | same order |"
    )
    print("|:---|:---|:---|:---|:---|---:|---:|:---|")
    for r in rows:
        ok = "error" not in r
        print(
            f"| {r['kind']} | {r.get('sentence_transformers', r['venv'])} | {r['backend']} "
            f"| {r['file'] if r['file'] != '-' else 'default'} "
            f"| {'yes (' + r['class'] + ')' if ok else 'no: ' + r['error']} "
            f"| {r.get('max_abs_diff', float('nan')):.2e} | {r.get('min_cosine', float('nan')):.5f} "
            f"| {'–' if r.get('same_order') is None else r['same_order']} |"
        )
    if any("error" in r for r in rows if r["file"] == "-"):
        sys.exit(1)


if __name__ == "__main__":
    main()
