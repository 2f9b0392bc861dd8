"""Our scorer timed in a process of its own, as ``st_contender.py`` times sentence-transformers.

sentence-transformers' compiled backends are timed in a fresh process of their venv, ours in
``scoring_speed.py``'s own process — which by then has loaded bm25s, ranx, several torch models
and their thread pools. ``--own-process BACKEND`` adds ours run the same way as theirs, so a
gap between the two is not the benchmark's asymmetry. Same protocol as ``st_contender.py``:
load once (building any compiled graph into ``CACHE``), then ``st_contender.serve``.

    python ours_contender.py KIND MODEL BACKEND MAX_LENGTH BATCH ITEMS.json CACHE OPTIONS.json
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> int:
    kind, model, backend, max_length, batch, items_path, cache, options = sys.argv[1:9]
    items = json.loads(Path(items_path).read_text(encoding="utf-8"))
    kind_opts = json.loads(options)
    logging.getLogger("mergekit_ir").setLevel(logging.ERROR)
    from st_contender import serve  # the same protocol, beside this file

    from mergekit_ir.plugin_host import catalog
    from mergekit_ir.scoring import compiled
    from mergekit_ir.scoring.scorer import ScoringSettings

    # measured as itself, as in scoring_speed.py: never switched back to torch here
    inf = float("inf")
    compiled.RULE = compiled.FaithfulnessRule(inf, -inf, -inf, -inf)
    settings = ScoringSettings(
        "cpu", "fp32", int(batch), show_progress=False, backend=backend, cache_dir=Path(cache)
    )
    scorer = catalog().scorer(kind).load(Path(model), kind_opts, settings)
    if kind in ("bi-encoder", "splade"):

        def fn() -> object:
            return scorer.encode_documents(items)
    else:
        pairs = [tuple(p) for p in items]

        def fn() -> object:
            return scorer.score_pairs(pairs)

    return serve(fn)


if __name__ == "__main__":
    sys.exit(main())
