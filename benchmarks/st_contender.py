"""A sentence-transformers contender timed inside another virtual environment.

sentence-transformers' ``backend="onnx"`` / ``"openvino"`` need Optimum, which does not fit
the dev extra (benchmarks/st_backends.py builds the oracle venvs). ``scoring_speed.py
--st-python PYTHON:BACKEND`` starts this script with that venv's Python; it loads the model
once and then, for every line ``go`` on stdin, scores the same items and answers one JSON line
``{"wall": s, "cpu": s}`` — its own timing, so the pipe costs nothing in the measurement and
rounds interleave with the parent's contenders as in ``timed``.

    PYTHON st_contender.py KIND MODEL BACKEND MAX_LENGTH BATCH ITEMS.json

This file imports nothing from mergekit_ir: it runs where mergekit_ir is not installed.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable


def main() -> int:
    kind, model, backend, max_length, batch, items_path = sys.argv[1:7]
    max_length, batch = int(max_length), int(batch)
    with open(items_path, encoding="utf-8") as f:
        items = json.load(f)
    import torch
    from sentence_transformers import CrossEncoder, SentenceTransformer, SparseEncoder

    if kind == "bi-encoder":
        m = SentenceTransformer(model, device="cpu", backend=backend)
        m.max_seq_length = max_length

        def fn() -> object:
            return m.encode(items, batch_size=batch)
    elif kind == "splade":
        m = SparseEncoder(model, device="cpu", backend=backend)
        m.max_seq_length = max_length

        def fn() -> object:
            return m.encode_document(items, batch_size=batch)
    else:
        m = CrossEncoder(model, device="cpu", max_length=max_length, backend=backend)
        pairs = [tuple(p) for p in items]

        def fn() -> object:
            return m.predict(pairs, batch_size=batch, activation_fn=torch.nn.Identity())

    return serve(fn)


def serve(fn: Callable[[], object]) -> int:
    """The contender protocol (also ``ours_contender.py``'s): warm up, say ready, then time one
    call of ``fn`` per ``go`` line and answer its (wall, CPU) seconds."""
    fn()  # warm-up (and any export at load is behind us)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip() != "go":
            break
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        print(
            json.dumps({"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
