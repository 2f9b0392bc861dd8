"""Put GermanQuAD where registry.yaml expects it (data/germanquad/, BEIR format).

GermanQuAD is not in ir_datasets. Two sources:

  beir (default)  BEIR's germanquad.zip, the data the paper used (its code downloads it):
                  ~2.8 M German Wikipedia passages, test queries, qrels/test.tsv.
  hub             deepset/germanquad on the Hugging Face hub, converted: the corpus is only
                  the split's own contexts (474 for test), so numbers are NOT comparable
                  with the paper's. Uses `datasets` when it can load the dataset, else the
                  hub's JSON rows API (datasets-server); standard library only otherwise.

    python scripts/germanquad_to_beir.py                  # BEIR zip -> data/germanquad
    python scripts/germanquad_to_beir.py --source hub     # converted from deepset/germanquad
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

BEIR_URLS = (
    "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/germanquad.zip",
    "https://dpr-german.s3.eu-west-1.amazonaws.com/germanquad.zip",
)
HUB_ID = "deepset/germanquad"
ROWS_API = "https://datasets-server.huggingface.co"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "data" / "germanquad"


def from_beir_zip(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "germanquad.zip"
        for url in BEIR_URLS:
            try:
                print(f"downloading {url}", file=sys.stderr)
                with urllib.request.urlopen(url, timeout=60) as r, archive.open("wb") as f:
                    shutil.copyfileobj(r, f, 1 << 20)
                break
            except OSError as exc:
                print(f"  failed: {exc}", file=sys.stderr)
        else:
            sys.exit(
                "could not download germanquad.zip; try --source hub (not comparable with the paper)"
            )
        with zipfile.ZipFile(archive) as z:
            for m in z.infolist():
                parts = Path(m.filename).parts
                if m.is_dir() or not parts or parts[0] == "__MACOSX":
                    continue
                rel = Path(*parts[1:]) if parts[0] == "germanquad" else Path(*parts)
                target = out / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(m) as src, target.open("wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)


def _get_json(path: str, **params) -> dict:
    url = f"{ROWS_API}/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=60) as r:
        return json.load(r)


def hub_rows(split: str) -> list[dict]:
    """The split's rows (id, context, question, answers) via `datasets`, else the JSON rows API."""
    try:
        import datasets

        return list(datasets.load_dataset(HUB_ID, split=split))
    except Exception as exc:  # not installed, or a version that no longer runs dataset scripts
        print(
            f"datasets could not load {HUB_ID} ({type(exc).__name__}); using the JSON rows API",
            file=sys.stderr,
        )
    configs = [
        s["config"] for s in _get_json("splits", dataset=HUB_ID)["splits"] if s["split"] == split
    ]
    if not configs:
        sys.exit(f"{HUB_ID} has no split {split!r}")
    rows, offset = [], 0
    while True:
        page = _get_json(
            "rows", dataset=HUB_ID, config=configs[0], split=split, offset=offset, length=100
        )
        rows += [r["row"] for r in page["rows"]]
        offset += len(page["rows"])
        if not page["rows"] or offset >= page["num_rows_total"]:
            return rows


def from_hub(out: Path, split: str) -> None:
    doc_ids: dict[str, str] = {}
    queries, qrels = [], []
    for row in hub_rows(split):
        ctx = row["context"]
        did = doc_ids.setdefault(ctx, f"c{len(doc_ids)}")
        qid = str(row["id"])
        queries.append({"_id": qid, "text": row["question"]})
        qrels.append((qid, did))
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    with (out / "corpus.jsonl").open("w", encoding="utf-8") as f:
        for ctx, did in doc_ids.items():
            f.write(json.dumps({"_id": did, "title": "", "text": ctx}, ensure_ascii=False) + "\n")
    with (out / "queries.jsonl").open("w", encoding="utf-8") as f:
        for q in queries:
            f.write(json.dumps(q, ensure_ascii=False) + "\n")
    with (out / "qrels" / f"{split}.tsv").open("w", encoding="utf-8") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        f.writelines(f"{q}\t{d}\t1\n" for q, d in qrels)
    print(f"{len(doc_ids)} documents, {len(queries)} {split} queries", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", choices=("beir", "hub"), default="beir")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default: {DEFAULT_OUT}")
    ap.add_argument("--split", default="test", help="hub split to convert (default: test)")
    args = ap.parse_args(argv)
    split = "test" if args.source == "beir" else args.split
    # Built beside the target and renamed at the end: a failed download leaves no folder that
    # `mergeir run --dry-run` could mistake for the dataset.
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.out.parent, prefix=f".{args.out.name}.") as tmp:
        staging = Path(tmp) / "data"
        staging.mkdir()
        try:
            if args.source == "beir":
                from_beir_zip(staging)
            else:
                from_hub(staging, split)
        except (OSError, ValueError, KeyError) as exc:  # network, HTTP, or an unexpected payload
            sys.exit(f"could not build {args.out} from {args.source}: {type(exc).__name__}: {exc}")
        missing = [
            p
            for p in ("corpus.jsonl", "queries.jsonl", f"qrels/{split}.tsv")
            if not (staging / p).is_file()
        ]
        if missing:
            sys.exit(f"{args.out}: the download lacks {', '.join(missing)}; nothing was written")
        if args.out.exists():
            shutil.rmtree(args.out)
        staging.rename(args.out)
    print(f"{args.out}: ok", file=sys.stderr)


if __name__ == "__main__":
    main()
