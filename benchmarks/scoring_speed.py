"""Scoring speed and faithfulness per precision and backend: ours (torch fp32/bf16, ONNX
Runtime fp32/int8, OpenVINO fp32/int8) vs sentence-transformers.

    flock /tmp/mergeir-heavy.lock python benchmarks/scoring_speed.py \\
        [--models bi-encoder,cross-encoder,splade,monot5,causal-lm] [--queries 300] [--k 20] \\
        [--speed-items 256] [--repeat 3] [--batch-size 32] [--max-length 256] \\
        [--dtypes fp32,bf16] [--backends onnx,onnx-int8,openvino,openvino-int8]

For each model, on this machine's CPU (``--device cpu``):

- **speed**: the same ``--speed-items`` SciFact texts (bi-encoder, SPLADE: documents encoded;
  cross-encoder: (query, document) pairs scored) through ours in fp32, ours in bf16 and
  sentence-transformers' torch fp32 (``SentenceTransformer.encode``, ``CrossEncoder.predict``,
  ``SparseEncoder.encode_document``), interleaved, best of ``--repeat``; items/s by wall and by
  CPU time (all threads; the steadier measure on a shared machine) and the ratio to
  sentence-transformers. Its ``backend="onnx"`` / ``"openvino"`` rows are added when optimum /
  onnxruntime / openvino are importable (they are not installed in this project's venv), or
  from another venv with ``--st-python PYTHON:BACKEND`` (``st_contender.py``, timed there);
  ``--own-process BACKEND`` times ours the same way, alone in a fresh process
  (``ours_contender.py``), so the two sides are run alike;
- **faithfulness**: SciFact test (``--queries`` queries), BM25 (bm25s) top-``--k``, re-ranked by
  ours in fp32 and in bf16 — NDCG@10 of each and Δ (bf16 is the default only if |Δ| ≤ 0.002) —
  and Kendall τ between the two score lists of each query's BM25 top-8 (what the calibration
  rule compares), with the rule's verdict on the sample ``--dtype auto`` would take and its
  pass rate over 1,000 random 8-query samples;
- what ``--dtype auto`` resolves to on this CPU (and why);
- with ``--backends``: each compiled backend (``--backend onnx`` …, through the scorer's own
  code path) as a speed contender and in the NDCG@10 run (Δ against our torch fp32, Kendall τ
  of each query's top-8, max |Δ score|, the first-batch check's verdict), and what an export
  costs: the cold build (torch.export + ONNX Runtime quantisation / OpenVINO conversion, into an
  empty cache) and the warm load (from the cache), and the pass length from which a build pays
  for itself against torch fp32 (``mergekit_ir.scoring.compiled.EXPORT_COST``).

Models: ``../shared/models/all-MiniLM-L6-v2`` (bi-encoder), a cross-encoder built from it
(``AutoModelForSequenceClassification``, seeded random one-logit head: real speed, meaningless
relevance — its NDCG is near random, its Δ still measures bf16 drift) and
``../shared/models/splade-tiny``; ``monot5`` / ``causal-lm`` are a small *random* T5 and Llama
(4 layers, d_model 256, MiniLM's WordPiece vocabulary: real shapes, meaningless relevance; their
Δ and τ still measure drift). Prints markdown tables; ``--json PATH`` saves the numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

logging.getLogger("mergekit_ir").setLevel(logging.ERROR)
for noisy in ("transformers", "sentence_transformers"):
    logging.getLogger(noisy).setLevel(logging.ERROR)

SHARED = Path(__file__).resolve().parents[2] / "shared"
MINILM = SHARED / "models/all-MiniLM-L6-v2"
SPLADE = SHARED / "models/splade-tiny"
SCIFACT = SHARED / "data/beir/scifact"
MODELS = ("bi-encoder", "cross-encoder", "splade")
EXTRA_MODELS = ("monot5", "causal-lm")
UNIT = {"bi-encoder": "docs", "cross-encoder": "pairs", "splade": "docs"}
UNIT.update(monot5="pairs", **{"causal-lm": "pairs"})
#: scorer options of the random generative models (the WordPiece vocabulary has plain words)
GEN_OPTIONS = {
    "monot5": {"true_token": "true", "false_token": "false"},
    "causal-lm": {"mode": "relevance_token", "yes_token": "yes", "no_token": "no"},
}


@dataclass(frozen=True)
class Measured:
    """(wall, CPU) seconds a contender measured itself (one in another process)."""

    wall: float
    cpu: float


def timed(fns: dict[str, Callable[[], object]], repeat: int) -> dict[str, tuple[float, float]]:
    """Best (wall, CPU) seconds of each function over ``repeat`` interleaved rounds (a varying
    machine load hits all alike). CPU time counts every thread of this process, or of the
    contender's own process when it returns :class:`Measured`."""
    best = {name: (float("inf"), float("inf")) for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            wall, cpu = time.perf_counter(), time.process_time()
            got = fn()
            w, c = time.perf_counter() - wall, time.process_time() - cpu
            if isinstance(got, Measured):
                w, c = got.wall, got.cpu
            best[name] = (min(best[name][0], w), min(best[name][1], c))
    return best


class RemoteContender:
    """A contender timed in a process of its own: sentence-transformers with a backend that
    needs Optimum, run by ``st_contender.py`` in the venv of ``python`` (e.g. the st-openvino
    oracle venv of st_backends.py), or ours by ``ours_contender.py`` (``--own-process``):
    loaded once, timed there per call on the same items."""

    def __init__(self, script: str, python: str, args_before: list, items: list, args_after=()):
        items_file = Path(tempfile.mkstemp(suffix=".json")[1])
        items_file.write_text(json.dumps(items), encoding="utf-8")
        cmd = [python, str(Path(__file__).with_name(script)), *map(str, args_before)]
        cmd += [str(items_file), *map(str, args_after)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready = self.proc.stdout.readline()
        items_file.unlink()
        if not ready.strip():
            raise RuntimeError(f"{' '.join(cmd[:2])}: the contender did not start")

    def __call__(self, _items: object = None) -> Measured:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        got = json.loads(self.proc.stdout.readline())
        return Measured(got["wall"], got["cpu"])

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def cpu_report() -> dict[str, object]:
    from mergekit_ir.scoring import scorer as sc

    flags = sc._cpuinfo_flags()
    model = "?"
    with contextlib.suppress(OSError, StopIteration):
        model = next(
            line.partition(":")[2].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    auto = sc.resolve_dtype("auto", torch.device("cpu"))
    return {
        "cpu": model,
        "torch": torch.__version__,
        "capability": str(torch.backends.cpu.get_cpu_capability()),
        "threads": torch.get_num_threads(),
        "bf16_flags": sorted(f for f in flags if f in ("avx512_bf16", "amx_bf16", "amx_tile")),
        "avx512f": "avx512f" in flags,
        "auto_dtype": str(auto).removeprefix("torch."),
        "override": os.environ.get(sc.CPU_BF16_ENV),
    }


def build_cross_encoder(folder: Path) -> Path:
    """MiniLM's BERT as a sequence classifier with a seeded random one-logit head."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(MINILM, num_labels=1)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(MINILM).save_pretrained(folder)
    return folder


def build_generative(kind: str, folder: Path) -> Path:
    """A random T5 (monot5) or Llama (causal-lm), 4 layers, width 256, on MiniLM's tokenizer."""
    from transformers import (
        AutoTokenizer,
        LlamaConfig,
        LlamaForCausalLM,
        T5Config,
        T5ForConditionalGeneration,
    )

    tok = AutoTokenizer.from_pretrained(MINILM)
    torch.manual_seed(0)
    if kind == "monot5":
        model = T5ForConditionalGeneration(
            T5Config(
                vocab_size=tok.vocab_size,
                d_model=256,
                d_kv=32,
                d_ff=1024,
                num_layers=4,
                num_heads=8,
                decoder_start_token_id=tok.pad_token_id,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.sep_token_id,
            )
        )
    else:
        model = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=tok.vocab_size,
                hidden_size=256,
                intermediate_size=1024,
                num_hidden_layers=4,
                num_attention_heads=8,
                num_key_value_heads=4,
                max_position_embeddings=1024,
                pad_token_id=tok.pad_token_id,
                bos_token_id=tok.cls_token_id,
                eos_token_id=tok.sep_token_id,
            )
        )
    model.eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def compiled_forward(scorer: object) -> object | None:
    """The scorer's compiled graph of its current weights (None under torch)."""
    found = list(getattr(scorer, "_compiled", {}).values())
    return found[-1] if found else None


def st_contenders(kind: str, path: Path, max_length: int, batch: int) -> dict:
    """sentence-transformers' own scoring (a function of the items) per available backend."""
    from sentence_transformers import CrossEncoder, SentenceTransformer, SparseEncoder

    if kind not in MODELS:
        return {}
    backends = ["torch"]
    if importlib.util.find_spec("optimum") and importlib.util.find_spec("onnxruntime"):
        backends.append("onnx")
    if importlib.util.find_spec("optimum") and importlib.util.find_spec("openvino"):
        backends.append("openvino")
    out = {}
    for backend in backends:
        try:
            if kind == "bi-encoder":
                m = SentenceTransformer(str(path), device="cpu", backend=backend)
                m.max_seq_length = max_length
                fn = lambda items, m=m: m.encode(items, batch_size=batch)  # noqa: E731
            elif kind == "splade":
                m = SparseEncoder(str(path), device="cpu", backend=backend)
                m.max_seq_length = max_length
                fn = lambda items, m=m: m.encode_document(items, batch_size=batch)  # noqa: E731
            else:
                m = CrossEncoder(str(path), device="cpu", max_length=max_length, backend=backend)
                fn = lambda items, m=m: m.predict(  # noqa: E731
                    items, batch_size=batch, activation_fn=torch.nn.Identity()
                )
        except Exception as exc:  # an optional backend that does not load offline: say so
            print(f"  sentence-transformers backend={backend}: skipped ({exc})", file=sys.stderr)
            continue
        out[f"sentence-transformers {backend} fp32"] = fn
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--data", type=Path, default=SCIFACT)
    ap.add_argument("--queries", type=int, default=300, help="SciFact test queries (all: 300)")
    ap.add_argument("--k", type=int, default=20, help="BM25 candidates re-ranked per query")
    ap.add_argument("--speed-items", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=256, help="token limit, all contenders")
    ap.add_argument("--skip-ndcg", action="store_true")
    ap.add_argument("--dtypes", default="fp32,bf16", help="our torch dtypes (fp32 always runs)")
    ap.add_argument(
        "--backends",
        default="",
        help="our compiled backends, e.g. onnx,onnx-int8,openvino,openvino-int8 (fp32 weights)",
    )
    ap.add_argument(
        "--st-python",
        action="append",
        default=[],
        metavar="PYTHON:BACKEND",
        help="also time sentence-transformers' BACKEND (onnx, openvino) inside the venv of "
        "PYTHON, e.g. ~/.cache/mergekit-ir/oracle-venvs/st-openvino/bin/python:openvino",
    )
    ap.add_argument(
        "--own-process",
        default="",
        metavar="BACKEND[,BACKEND]",
        help="also time ours with these backends (torch, openvino, …) each in a fresh process "
        "of this venv (ours_contender.py), as sentence-transformers' --st-python rows are timed",
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    dtypes = ["fp32", *(d.strip() for d in args.dtypes.split(",") if d.strip() not in ("", "fp32"))]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    own_process = [b.strip() for b in args.own_process.split(",") if b.strip()]
    for path in (MINILM, SPLADE, args.data):
        if not path.exists():
            print(f"{path} not found", file=sys.stderr)
            return 2

    from mergekit_ir.evaluation.datasets import load_beir_folder
    from mergekit_ir.evaluation.metrics import evaluate, mean_scores
    from mergekit_ir.params import check_params
    from mergekit_ir.plugin_host import catalog
    from mergekit_ir.scoring import calibration, compiled
    from mergekit_ir.scoring import scorer as sc
    from mergekit_ir.scoring.scorer import ScoringSettings

    # each backend is measured as itself: the first-batch check is recorded with the product's
    # verdict (compiled.RULE) but never switches a contender back to torch here
    product_rule = compiled.RULE
    inf = float("inf")
    compiled.RULE = compiled.FaithfulnessRule(inf, -inf, -inf, -inf)

    cpu = cpu_report()
    print(
        f"CPU {cpu['cpu']}, torch {cpu['torch']} ({cpu['capability']} kernels, "
        f"{cpu['threads']} threads); bf16 hardware flags: {', '.join(cpu['bf16_flags']) or 'none'}"
        f" → --dtype auto on CPU = {cpu['auto_dtype']}\n"
    )
    ds = load_beir_folder(args.data, f"test[:{args.queries}]")
    fs = catalog().first_stage("bm25s")
    run = fs.build(ds.corpus, check_params(fs.params, {}, "bm25s", "bm25s"), None).search(
        ds.queries, args.k
    )
    docs = {d: ds.corpus[d].full_text for q in run.values() for d in q}
    pairs_all = [(ds.queries[q], docs[d]) for q in sorted(run) for d in sorted(run[q])]
    doc_texts = [docs[d] for d in sorted(docs)]
    n_speed = args.speed_items
    speed_docs = doc_texts[:n_speed]
    speed_pairs = pairs_all[:n_speed]
    bm25 = mean_scores(evaluate(ds.qrels, run, ["NDCG@10"]))["NDCG@10"]
    print(
        f"SciFact test: {len(ds.queries)} queries, BM25 top-{args.k}: {len(pairs_all)} pairs, "
        f"{len(docs)} distinct documents; BM25 NDCG@10 {bm25:.4f}\n"
    )
    results: dict[str, object] = {"cpu": cpu, "queries": len(ds.queries), "k": args.k}
    speed_rows, quality_rows = [], []
    export_rows: list[dict] = []
    backend_rows: list[dict] = []
    opts = {"max_length": args.max_length}

    with tempfile.TemporaryDirectory() as tmp:
        for kind in models:
            if kind in ("monot5", "causal-lm"):
                path = build_generative(kind, Path(tmp) / kind)
            else:
                path = {"bi-encoder": MINILM, "splade": SPLADE}.get(kind) or build_cross_encoder(
                    Path(tmp) / "cross-encoder"
                )
            scorer_kind = catalog().scorer(kind)
            kind_opts = dict(opts) | GEN_OPTIONS.get(kind, {})
            if kind == "causal-lm":  # its limits are per field
                kind_opts = {k: v for k, v in kind_opts.items() if k != "max_length"}
                kind_opts["doc_max_length"] = args.max_length
            compiled_cache = Path(tmp) / f"cache-{kind}"  # empty: the first build is cold

            def load(
                dtype: str,
                backend: str = "torch",
                cache: Path = compiled_cache,
                scorer_kind=scorer_kind,
                path=path,
                kind_opts=kind_opts,
            ):
                return scorer_kind.load(
                    path,
                    kind_opts,
                    ScoringSettings(
                        "cpu",
                        dtype,
                        args.batch_size,
                        show_progress=False,
                        backend=backend,
                        cache_dir=cache,
                    ),
                )

            ours = {f"torch {d}": load(d) for d in dtypes}
            ours.update({f"{b.replace('-', ' ')}": load("fp32", b) for b in backends})
            # -- speed --------------------------------------------------------------------
            items = speed_docs if UNIT[kind] == "docs" else speed_pairs
            of_items: dict[str, Callable[[list], object]] = {}
            for d, s in ours.items():
                name = f"ours {d}"
                if UNIT[kind] == "docs":
                    of_items[name] = s.encode_documents
                else:
                    of_items[name] = s.score_pairs
            of_items.update(st_contenders(kind, path, args.max_length, args.batch_size))
            remotes = []
            for spec in args.st_python if kind in MODELS else []:
                python, _, backend = spec.rpartition(":")
                try:
                    st_args = [kind, path, backend, args.max_length, args.batch_size]
                    remotes.append(RemoteContender("st_contender.py", python, st_args, items))
                except (OSError, RuntimeError) as exc:
                    print(f"  sentence-transformers {backend} ({python}): skipped ({exc})")
                    continue
                of_items[f"sentence-transformers {backend} fp32 (own venv)"] = remotes[-1]
            for backend in own_process:  # ours as theirs is run: alone in a fresh process
                own_args = [kind, path, backend, args.max_length, args.batch_size]
                own_cache = Path(tmp) / f"cache-{kind}-own-{backend}"
                remotes.append(
                    RemoteContender(
                        "ours_contender.py",
                        sys.executable,
                        own_args,
                        items,
                        [own_cache, json.dumps(kind_opts)],
                    )
                )
                of_items[f"ours {backend.replace('-', ' ')} (own process)"] = remotes[-1]
            for name, fn in of_items.items():  # warm-up: one batch each (the compiled: built)
                started = time.perf_counter()
                fn(items[: args.batch_size])
                fwd = compiled_forward(ours.get(name.removeprefix("ours ")))
                if fwd is not None:
                    # the cold build into an empty cache, then a warm load of the same entry
                    warm = load("fp32", ours[name.removeprefix("ours ")].settings.backend)
                    warm_fn = warm.encode_documents if UNIT[kind] == "docs" else warm.score_pairs
                    warm_fn(items[:2])
                    wfwd = compiled_forward(warm)
                    export_rows.append(
                        {
                            "model": kind,
                            "backend": name.removeprefix("ours "),
                            "used": fwd.used,
                            "cold_s": fwd.seconds,
                            "first_call_s": time.perf_counter() - started,
                            "warm_s": wfwd.seconds if wfwd is not None else None,
                            "warm_cached": wfwd.cached if wfwd is not None else None,
                            "check": fwd.faithfulness.summary() if fwd.faithfulness else None,
                            "rule_passes": product_rule.accepts(fwd.faithfulness)
                            if fwd.faithfulness
                            else None,
                            "warnings": list(ours[name.removeprefix("ours ")].warnings),
                        }
                    )
                    print(f"  {kind} export: {json.dumps(export_rows[-1])}", file=sys.stderr)
                    del warm
            fns = {name: (lambda fn=fn, it=items: fn(it)) for name, fn in of_items.items()}
            best = timed(fns, args.repeat)
            for remote in remotes:
                remote.close()
            base = best.get("sentence-transformers torch fp32") or best.get("ours torch fp32")
            ours_fp32 = best.get("ours torch fp32")
            for name, (wall, cpu_s) in best.items():
                row = {
                    "model": kind,
                    "contender": name,
                    "items": len(items),
                    "unit": UNIT[kind],
                    "wall_s": wall,
                    "cpu_s": cpu_s,
                    "per_s_wall": len(items) / wall,
                    "per_s_cpu": len(items) / cpu_s,
                    "ratio_wall": base[0] / wall if base else None,
                    "ratio_cpu": base[1] / cpu_s if base else None,
                    "vs_torch_wall": ours_fp32[0] / wall if ours_fp32 else None,
                    "vs_torch_cpu": ours_fp32[1] / cpu_s if ours_fp32 else None,
                }
                speed_rows.append(row)
                print(
                    f"  {kind:13s} {name:34s} {row['per_s_wall']:8.1f} {UNIT[kind]}/s wall "
                    f"{row['per_s_cpu']:8.1f} /CPU-s  ×{row['ratio_cpu'] or 0:.2f} (CPU)",
                    file=sys.stderr,
                )
            for r in export_rows:  # break-even: the pass length that wins a cold build back
                if r["model"] != kind:
                    continue
                per = {n: len(items) / wall for n, (wall, _) in best.items()}
                t_torch, t_b = per.get("ours torch fp32"), per.get(f"ours {r['backend']}")
                r["items_per_s_torch"], r["items_per_s_backend"] = t_torch, t_b
                saving = (1 / t_torch - 1 / t_b) if t_torch and t_b else 0.0
                # a derived entry (int8, OpenVINO) is built from the fp32 ONNX export: when that
                # was built earlier in this run, its time counts here too
                base = next(
                    (b for b in export_rows if b["model"] == kind and b["backend"] == "onnx"), None
                )
                r["cold_total_s"] = r["cold_s"] + (
                    base["cold_s"] if base is not None and base is not r else 0.0
                )
                r["break_even_items"] = r["cold_total_s"] / saving if saving > 0 else None
            # -- faithfulness ---------------------------------------------------------------
            if args.skip_ndcg:
                continue
            runs, secs = {}, {}
            for d, s in ours.items():
                wall, cpu0 = time.perf_counter(), time.process_time()
                runs[d] = s.rerank(ds.queries, run, docs)
                secs[d] = (time.perf_counter() - wall, time.process_time() - cpu0)
            ndcg_all = {
                d: mean_scores(evaluate(ds.qrels, r, ["NDCG@10"]))["NDCG@10"]
                for d, r in runs.items()
            }
            for d in ours:
                if d == "torch fp32" or d == "torch bf16":
                    continue
                qtaus, diff = [], 0.0
                for q in sorted(run):
                    top = sorted(run[q].items(), key=lambda kv: (-kv[1], kv[0]))[:8]
                    ref = [runs["torch fp32"][q][doc] for doc, _ in top]
                    got = [runs[d][q][doc] for doc, _ in top]
                    diff = max([diff, *(abs(a - b) for a, b in zip(ref, got, strict=True))])
                    if len(ref) >= 2:
                        qtaus.append(calibration.kendall_tau(ref, got))
                fwd = compiled_forward(ours[d])
                backend_rows.append(
                    {
                        "model": kind,
                        "backend": d,
                        "ndcg": ndcg_all[d],
                        "ndcg_fp32": ndcg_all["torch fp32"],
                        "delta": ndcg_all[d] - ndcg_all["torch fp32"],
                        "tau_mean": sum(qtaus) / len(qtaus),
                        "tau_min": min(qtaus),
                        "tau_below_1": sum(1 for t in qtaus if t < 1) / len(qtaus),
                        "max_abs_score_diff": diff,
                        "used": fwd.used if fwd is not None else None,
                        "rerank_s": secs[d],
                        "rerank_s_fp32": secs["torch fp32"],
                    }
                )
                print(f"  {kind}: {json.dumps(backend_rows[-1])}", file=sys.stderr)
            if "torch bf16" not in runs:
                del ours
                continue
            runs = {"fp32": runs["torch fp32"], "bf16": runs["torch bf16"]}
            secs = {"fp32": secs["torch fp32"], "bf16": secs["torch bf16"]}
            ndcg = {
                d: mean_scores(evaluate(ds.qrels, r, ["NDCG@10"]))["NDCG@10"]
                for d, r in runs.items()
            }
            taus = {}
            for q in sorted(run):
                top = sorted(run[q].items(), key=lambda kv: (-kv[1], kv[0]))[:8]
                ref = [runs["fp32"][q][d] for d, _ in top]
                got = [runs["bf16"][q][d] for d, _ in top]
                if len(ref) >= 2:
                    taus[q] = calibration.kendall_tau(ref, got)
            # the rule on the sample --dtype auto takes (the product's own path, forced on)
            os.environ[sc.CPU_BF16_ENV] = "1"
            try:
                auto = scorer_kind.load(
                    path, kind_opts, ScoringSettings("cpu", "auto", args.batch_size, False)
                )
                verdict = auto.calibrate(calibration.sample_from_rerank(ds.queries, run, docs))
            finally:
                if cpu["override"] is None:
                    del os.environ[sc.CPU_BF16_ENV]
                else:
                    os.environ[sc.CPU_BF16_ENV] = str(cpu["override"])
            rng = random.Random(0)
            qs = sorted(taus)
            passes = 0
            for _ in range(1000):
                sample = rng.sample(qs, min(calibration.RULE.queries, len(qs)))
                vals = [taus[q] for q in sample]
                passes += (
                    sum(vals) / len(vals) >= calibration.RULE.min_mean_tau
                    and min(vals) >= calibration.RULE.min_query_tau
                )
            tv = list(taus.values())
            row = {
                "model": kind,
                "ndcg_fp32": ndcg["fp32"],
                "ndcg_bf16": ndcg["bf16"],
                "delta": ndcg["bf16"] - ndcg["fp32"],
                "rerank_s_fp32": secs["fp32"],
                "rerank_s_bf16": secs["bf16"],
                "tau_mean": sum(tv) / len(tv),
                "tau_min": min(tv),
                "tau_below_1": sum(1 for t in tv if t < 1) / len(tv),
                "tau_below_min_query": sum(1 for t in tv if t < calibration.RULE.min_query_tau),
                "auto_sample": verdict.summary(),
                "auto_passed": verdict.passed,
                "random_sample_pass_rate": passes / 1000,
            }
            quality_rows.append(row)
            print(f"  {kind}: {json.dumps(row)}", file=sys.stderr)
            del ours, auto

    print(f"### Speed (CPU, batch {args.batch_size}, max_length {args.max_length})\n")
    print(
        "| model | contender | items | items/s (wall) | items/s (CPU time) | × ST torch fp32 (wall) | × ST torch fp32 (CPU) | × ours torch fp32 (wall) | × ours torch fp32 (CPU) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")

    def ratio(x: float | None) -> str:
        return f"{x:.2f}×" if x else "–"

    for r in speed_rows:
        print(
            f"| {r['model']} | {r['contender']} | {r['items']} {r['unit']} | {r['per_s_wall']:.1f} | "
            f"{r['per_s_cpu']:.1f} | {ratio(r['ratio_wall'])} | {ratio(r['ratio_cpu'])} | "
            f"{ratio(r['vs_torch_wall'])} | {ratio(r['vs_torch_cpu'])} |"
        )
    if export_rows:
        print("\n### What an export costs (cold build into an empty cache; warm load from it)\n")
        print(
            "| model | backend | cold build s (with the fp32 export) | warm load s | "
            "items/s torch fp32 → backend (wall) | pays after (items) | first-batch check |"
        )
        print("|---|---|---:|---:|---:|---:|---|")
        for r in export_rows:
            be = r.get("break_even_items")
            print(
                f"| {r['model']} | {r['backend']} | {r.get('cold_total_s', r['cold_s']):.1f} | "
                f"{r['warm_s'] if r['warm_s'] is None else round(r['warm_s'], 2)} | "
                f"{r.get('items_per_s_torch') or 0:.1f} → {r.get('items_per_s_backend') or 0:.1f} | "
                f"{'never' if be is None else f'{be:,.0f}'} | "
                f"{'pass' if r['rule_passes'] else 'FAIL (auto/explicit: torch)'}: {r['check']} |"
            )
    if backend_rows:
        print(
            f"\n### Backends vs our torch fp32: NDCG@10 on SciFact test ({len(ds.queries)} queries, "
            f"BM25 top-{args.k}); Kendall τ of each query's BM25 top-8; max |Δ score|\n"
        )
        print(
            "| model | backend | torch fp32 | backend | Δ | τ mean | τ min | queries τ<1 | max |Δ score| | used | rerank s torch / backend (wall) |"
        )
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")
        for r in backend_rows:
            print(
                f"| {r['model']} | {r['backend']} | {r['ndcg_fp32']:.4f} | {r['ndcg']:.4f} | "
                f"{r['delta']:+.4f} | {r['tau_mean']:.3f} | {r['tau_min']:.3f} | "
                f"{100 * r['tau_below_1']:.0f} % | {r['max_abs_score_diff']:.2e} | {r['used']} | "
                f"{r['rerank_s_fp32'][0]:.0f} / {r['rerank_s'][0]:.0f} |"
            )
    if quality_rows:
        print(
            f"\n### NDCG@10, SciFact test ({len(ds.queries)} queries), BM25 top-{args.k} re-ranked; "
            f"Kendall τ fp32 vs bf16 over each query's BM25 top-8\n"
        )
        print(
            "| model | fp32 | bf16 | Δ | rerank s fp32 / bf16 (wall) | τ mean | τ min | queries τ<1 | "
            f"queries τ<{calibration.RULE.min_query_tau:g} | auto's calibration sample | random 8-query samples passing |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
        for r in quality_rows:
            print(
                f"| {r['model']} | {r['ndcg_fp32']:.4f} | {r['ndcg_bf16']:.4f} | {r['delta']:+.4f} | "
                f"{r['rerank_s_fp32'][0]:.0f} / {r['rerank_s_bf16'][0]:.0f} | {r['tau_mean']:.3f} | "
                f"{r['tau_min']:.3f} | {100 * r['tau_below_1']:.0f} % | {r['tau_below_min_query']} | "
                f"{'pass' if r['auto_passed'] else 'FAIL'}: {r['auto_sample']} | "
                f"{100 * r['random_sample_pass_rate']:.1f} % |"
            )
    results.update(
        speed=speed_rows,
        quality=quality_rows,
        exports=export_rows,
        backends=backend_rows,
        platform=platform.platform(),
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
