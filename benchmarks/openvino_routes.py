"""OpenVINO fp32 from the torch program or from the ONNX file: the same graph, timed alike.

``--backend openvino`` used to convert the scorer's graph from its ONNX export (the file
ONNX Runtime reads); sentence-transformers' OpenVINO backend (through Optimum) converts from
torch with OpenVINO's PyTorch frontend, and was 6–14 % faster on MiniLM. This script builds one
scorer graph three ways and times the three OpenVINO models on the same padded batches, in one
process, interleaved (best of ``--rounds``), through the product's own
:class:`mergekit_ir.scoring.compiled.Session` (2 threads, ``LATENCY``, f32):

- ``onnx``: torch.export → ONNX (``compiled.export_graph``) → ``openvino.convert_model`` of the
  file (``compiled.convert_openvino``): the route before, kept for T5/Llama;
- ``torch.export``: the exported program converted by OpenVINO's PyTorch frontend
  (``compiled.export_openvino``): the route encoders take now;
- ``jit.trace``: ``openvino.convert_model(module, example_input=…)`` (TorchScript tracing, what
  Optimum does) — for comparison only: tracing can freeze shape-dependent mask code.

    flock /tmp/mergeir-heavy.lock python benchmarks/openvino_routes.py \\
        [--models bi-encoder,cross-encoder,splade] [--items 256] [--rounds 5]

Prints the build time of each route, the max |difference| of its outputs from the ONNX route's
on every batch, and items/s with the ratio to the ONNX route.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scoring_speed import MINILM, SCIFACT, SPLADE, build_cross_encoder  # noqa: E402

#: each scorer kind's graph method (what ``backend_forward`` exports)
GRAPHS = {"bi-encoder": "embed", "cross-encoder": "logit", "splade": "term_weights_graph"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="bi-encoder,cross-encoder,splade")
    ap.add_argument("--items", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=256)
    args = ap.parse_args(argv)
    for path in (MINILM, SPLADE, SCIFACT):
        if not path.exists():
            print(f"{path} not found", file=sys.stderr)
            return 2
    import openvino as ov

    from mergekit_ir.evaluation.datasets import load_beir_folder
    from mergekit_ir.plugin_host import catalog
    from mergekit_ir.scoring import compiled
    from mergekit_ir.scoring.batching import pad_token_id, padded_batches, tokenize
    from mergekit_ir.scoring.scorer import ScoringSettings

    ds = load_beir_folder(SCIFACT, "test[:100]")
    docs = [ds.corpus[d].full_text for d in sorted(ds.corpus)[: args.items]]
    queries = [ds.queries[q] for q in sorted(ds.queries)]
    threads = torch.get_num_threads()
    print(f"openvino {ov.__version__}, torch {torch.__version__}, {threads} threads\n")
    print("| model | route | build s | max \\|diff\\| vs onnx | items/s | × onnx route |")
    print("|---|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in [m.strip() for m in args.models.split(",") if m.strip()]:
            path = {"bi-encoder": MINILM, "splade": SPLADE}.get(kind) or build_cross_encoder(
                Path(tmp) / "cross-encoder"
            )
            settings = ScoringSettings("cpu", "fp32", args.batch_size, show_progress=False)
            scorer = catalog().scorer(kind).load(path, {"max_length": args.max_length}, settings)
            if kind == "cross-encoder":
                pairs = [(queries[i % len(queries)], d) for i, d in enumerate(docs)]
                firsts, seconds = [p[0] for p in pairs], [p[1] for p in pairs]
            else:
                firsts, seconds = docs, None
            enc = tokenize(scorer.tokenizer, firsts, seconds, args.max_length, scorer.truncation)
            names = compiled.input_order(
                [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in enc]
            )
            batches = [
                {n: b[n].numpy() for n in names}
                for _, b in padded_batches(
                    enc, args.batch_size, torch.device("cpu"), pad_token_id(scorer.tokenizer)
                )
            ]
            example = {n: torch.from_numpy(batches[0][n][:2].copy()) for n in names}
            method = getattr(scorer, GRAPHS[kind])  # as CompiledForward builds it
            module = compiled._Graph.build(method, names, compiled.scorer_modules(scorer))
            out = Path(tmp) / f"routes-{kind}"
            out.mkdir()

            def via_onnx(xml: Path, module=module, example=example, out=out) -> None:
                compiled.export_graph(module, example, "scores", out / "model.onnx")
                compiled.convert_openvino(out / "model.onnx", xml)

            def via_export(xml: Path, module=module, example=example) -> None:
                compiled.export_openvino(module, example, xml)

            def via_trace(xml: Path, module=module, example=example) -> None:
                with torch.no_grad():
                    model = ov.convert_model(module, example_input=tuple(example.values()))
                for port, name in zip(model.inputs, example, strict=True):
                    port.get_tensor().set_names({name})
                ov.save_model(model, str(xml), compress_to_fp16=False)

            sessions, built = {}, {}
            for route, build in (
                ("onnx", via_onnx),
                ("torch.export", via_export),
                ("jit.trace", via_trace),
            ):
                xml = out / f"{route}.xml"
                started = time.perf_counter()
                build(xml)
                built[route] = time.perf_counter() - started
                sessions[route] = compiled.Session(xml, "openvino", threads)
            outputs = {r: [s.run(b) for b in batches] for r, s in sessions.items()}
            best = dict.fromkeys(sessions, float("inf"))
            for _ in range(args.rounds):
                for route, session in sessions.items():
                    started = time.perf_counter()
                    for b in batches:
                        session.run(b)
                    best[route] = min(best[route], time.perf_counter() - started)
            for route in sessions:
                diff = max(
                    float(np.abs(a - b).max())
                    for a, b in zip(outputs[route], outputs["onnx"], strict=True)
                )
                print(
                    f"| {kind} | {route} | {built[route]:.1f} | {diff:.1e} | "
                    f"{len(docs) / best[route]:.1f} | {best['onnx'] / best[route]:.2f}× |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
