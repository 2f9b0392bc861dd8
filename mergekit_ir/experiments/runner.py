"""The evaluation harness: one experiment from registry to report.

For each dataset: BM25 top-k (cached). For each triplet: re-rank the top-k with
Θ0, ΘD and ΘT (each loaded once, runs cached), then sweep α in place on the
loaded ΘT (no reload per α) over the dev split(s), pick α on the dev objective,
score the test split at α = 1 and at the tuned α, fuse each model run with BM25
(min-max, weighted sum, λ fixed or tuned on dev), evaluate, mark significant
improvements over the best baseline, and write reports, run files and a manifest.
"""

from __future__ import annotations

import json
import logging
import platform
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from mergekit_ir.errors import ConfigError
from mergekit_ir.evaluation.datasets import Dataset, load_beir_folder, load_ir_datasets
from mergekit_ir.evaluation.first_stage import Run
from mergekit_ir.experiments import quickstart
from mergekit_ir.experiments.dry_run import ir_datasets_id, local_beir_folder
from mergekit_ir.experiments.registry import (
    CheckpointRef,
    DatasetSpec,
    Experiment,
    Registry,
    Triplet,
)
from mergekit_ir.merging.checkpoint import open_checkpoint, resolve_folder
from mergekit_ir.merging.engine import MergeJob, build_plan
from mergekit_ir.merging.sweep import InPlaceSweep
from mergekit_ir.merging.task_vector import TaskVector
from mergekit_ir.plugin_host import catalog, installed_distributions
from mergekit_ir.reports.reported import compare as compare_reported
from mergekit_ir.scoring.scorer import Scorer, ScoringSettings
from mergekit_ir.storage import atomic
from mergekit_ir.storage.cache import Cache, cache_key
from mergekit_ir.storage.fingerprint import folder_fingerprint

log = logging.getLogger(__name__)

BASELINE_KEYS = ("bm25", "pretrained", "domain", "ir")
CANDIDATE_KEYS = ("merged@1", "merged@best")


@dataclass
class RunOptions:
    out_dir: Path
    cache: Cache
    device: str = "auto"
    datasets: tuple[str, ...] | None = None
    progress: bool = True
    batch_size: int | None = None
    dtype: str | None = None
    echo: Callable[[str], None] = print


@dataclass
class StageTimer:
    """Wall time per stage, printed at the end of every run."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - start

    def table(self) -> str:
        total = sum(self.seconds.values()) or 1e-9
        rows = [f"  {k:<13} {v:8.2f}s  {100 * v / total:5.1f}%" for k, v in self.seconds.items()]
        return "\n".join(["stage timings:", *rows, f"  {'total':<13} {total:8.2f}s"])


def alpha_label(alpha: Any) -> str:
    return f"{alpha:g}" if isinstance(alpha, int | float) else json.dumps(alpha, sort_keys=True)


def resolve_ref_folder(ref: CheckpointRef, reg: Registry, cache: Cache) -> Path:
    return quickstart.resolve(ref.ref, cache.root) or resolve_folder(
        ref.ref, ref.revision, reg.base_dir
    )


def load_dataset(spec: DatasetSpec, split: str, reg: Registry, cache: Cache) -> Dataset:
    """A dataset split from its local BEIR folder when present, else from ir_datasets."""
    folder = local_beir_folder(spec, reg, cache.root)
    if folder is not None:
        return load_beir_folder(folder, split, name=spec.name, language=spec.language)
    if not spec.ir_datasets:
        raise ConfigError(
            f"datasets.{spec.name}.beir: folder {spec.beir} not found (and no ir_datasets id to fall back on)"
        )
    return load_ir_datasets(ir_datasets_id(spec, split), name=spec.name, language=spec.language)


def selected_datasets(exp: Experiment, requested: Sequence[str] | None) -> list[str]:
    """The experiment's datasets, narrowed by ``--dataset`` (in the experiment's order)."""
    if not requested:
        return list(exp.datasets)
    unknown = [d for d in requested if d not in exp.datasets]
    if unknown:
        raise ConfigError(
            f"--dataset {unknown[0]}: not in experiment {exp.name} (it has: {', '.join(exp.datasets)})"
        )
    return [d for d in exp.datasets if d in requested]


def write_trec(path: Path, run: Run, tag: str) -> None:
    lines = []
    for qid in sorted(run):
        ranked = sorted(run[qid].items(), key=lambda x: (-x[1], x[0]))
        lines += [
            f"{qid} Q0 {did} {rank} {score:.6f} {tag}"
            for rank, (did, score) in enumerate(ranked, 1)
        ]
    atomic.write_text(path, "\n".join(lines) + "\n")


@dataclass
class Split:
    dataset: Dataset
    first_stage: Run
    fs_key: str
    role: str  # test | dev


class TripletRunner:
    """Runs every variant of one triplet; loads each model at most once."""

    def __init__(
        self, exp: Experiment, triplet: Triplet, reg: Registry, opts: RunOptions, timer: StageTimer
    ):
        self.exp, self.triplet, self.reg, self.opts, self.timer = exp, triplet, reg, opts, timer
        cat = catalog()
        self.kind = cat.scorer(triplet.scorer, f"triplets.{triplet.name}.scorer.kind")
        self.method = cat.merge_method(exp.method, f"experiments.{exp.name}.merge.method")
        self.settings = ScoringSettings(
            opts.device, opts.dtype or exp.dtype, opts.batch_size or exp.batch_size, opts.progress
        )
        with timer("loading"):
            self.ir_folder = resolve_ref_folder(triplet.ir, reg, opts.cache)
            if self.kind.check:
                self.kind.check(self.ir_folder)
            self.ir_source = open_checkpoint(str(self.ir_folder))
            self.pre_folder = (
                resolve_ref_folder(triplet.pretrained, reg, opts.cache)
                if triplet.pretrained
                else None
            )
            self.pre_source = open_checkpoint(str(self.pre_folder)) if self.pre_folder else None
            self.domain_folders = [resolve_ref_folder(d, reg, opts.cache) for d in triplet.domains]
        self.fingerprints = {"ir": self.ir_source.fingerprint()}
        if self.pre_source is not None:
            self.fingerprints["pretrained"] = self.pre_source.fingerprint()
        self._vectors: list[TaskVector] | None = None
        self._ir_scorer: Scorer | None = None
        self._sweep: InPlaceSweep | None = None

    # -- models -------------------------------------------------------------------------------
    def vectors(self) -> list[TaskVector]:
        if self._vectors is None:
            out = []
            for ref, folder in zip(self.triplet.domains, self.domain_folders, strict=True):
                if ref.kind == "lora":
                    out.append(TaskVector.from_lora(folder))
                elif ref.kind == "task_vector":
                    out.append(TaskVector.load(folder))
                else:
                    assert self.pre_source is not None
                    out.append(
                        TaskVector.from_checkpoints(self.pre_source, open_checkpoint(str(folder)))
                    )
            self._vectors = out
        return self._vectors

    @cached_property
    def vector_fingerprints(self) -> list[str]:
        fps = []
        for ref, folder in zip(self.triplet.domains, self.domain_folders, strict=True):
            if ref.kind == "checkpoint":
                fps.append(open_checkpoint(str(folder)).fingerprint())
            else:  # content-addressed, like checkpoints: the same adapter anywhere is one entry
                fps.append(folder_fingerprint(folder, salt=ref.kind))
        return fps

    def load_scorer(self, folder: Path) -> Scorer:
        torch.manual_seed(self.exp.seed)  # heads a checkpoint lacks are initialised reproducibly
        if self.kind.check:
            self.kind.check(folder)
        return self.kind.load(folder, self.triplet.scorer_options, self.settings)

    def ir_scorer(self) -> Scorer:
        if self._ir_scorer is None:
            with self.timer("loading"):
                self._ir_scorer = self.load_scorer(self.ir_folder)
        return self._ir_scorer

    def sweep(self) -> InPlaceSweep:
        if self._sweep is None:
            scorer = self.ir_scorer()
            with self.timer("merge"):
                job = MergeJob(
                    self.ir_source,
                    self.vectors(),
                    self.method,
                    dict(self.exp.merge_params),
                    pretrained=self.pre_source,
                    rules=self.triplet.alignment,
                )
                plan = build_plan(job)
                c = plan.counts()
                self.opts.echo(
                    f"  merge plan: {c['merge']} merged, {c['copy']} copied from ΘT, {c['skip']} skipped"
                )
                self._sweep = InPlaceSweep(scorer.model, job, plan)
        return self._sweep

    # -- runs ---------------------------------------------------------------------------------
    def _rerank(self, scorer: Scorer, split: Split) -> Run:
        ds = split.dataset
        docs = {d: ds.corpus[d].full_text for q in split.first_stage.values() for d in q}
        queries = {q: ds.queries[q] for q in split.first_stage}
        with self.timer("scoring"):
            run = scorer.rerank(queries, split.first_stage, docs)
        return run

    def model_run(
        self,
        variant: str,
        identity: list[Any],
        split: Split,
        scorer_fn: Callable[[], Scorer],
        before: Callable[[], None] | None = None,
    ) -> Run:
        key = cache_key(
            "model-run",
            self.triplet.scorer,
            dict(self.triplet.scorer_options),
            identity,
            split.fs_key,
            split.dataset.queries_fingerprint(),
        )
        label = f"{self.triplet.name}/{variant}/{split.dataset.name}:{split.role}"
        run = self.opts.cache.load_run("model", key, label)
        if run is None:
            scorer = scorer_fn()
            if before is not None:
                with self.timer("merge"):
                    before()
            run = self._rerank(scorer, split)
            self.opts.cache.save_run("model", key, run)
        return run

    def baseline_runs(self, splits: list[Split]) -> dict[str, dict[str, Run]]:
        """variant key -> split id -> run, for Θ0, each ΘD and ΘT."""
        out: dict[str, dict[str, Run]] = {}
        singles: list[tuple[str, Path | None]] = []
        if self.pre_folder is not None:
            singles.append(("pretrained", self.pre_folder))
        domain_checkpoints = [
            (r, f)
            for r, f in zip(self.triplet.domains, self.domain_folders, strict=True)
            if r.kind == "checkpoint"
        ]
        for key, (_, f) in zip(self.triplet.domain_rows, domain_checkpoints, strict=True):
            singles.append((key, f))
        for variant, folder in singles:
            holder: dict[str, Scorer] = {}
            fp = open_checkpoint(str(folder)).fingerprint()

            def get(_folder: Path = folder, _holder: dict = holder) -> Scorer:
                if "s" not in _holder:
                    with self.timer("loading"):
                        _holder["s"] = self.load_scorer(_folder)
                return _holder["s"]

            out[variant] = {split_id(s): self.model_run(variant, [fp], s, get) for s in splits}
            holder.clear()
        restore = self._sweep.restore if self._sweep is not None else None
        out["ir"] = {
            split_id(s): self.model_run("ir", [self.fingerprints["ir"]], s, self.ir_scorer, restore)
            for s in splits
        }
        return out

    def merged_run(self, alpha: Any, split: Split) -> Run:
        identity = [
            self.exp.method,
            dict(self.exp.merge_params),
            alpha_label(alpha),
            self.fingerprints,
            self.vector_fingerprints,
        ]
        return self.model_run(
            f"merged@{alpha_label(alpha)}",
            identity,
            split,
            self.ir_scorer,
            lambda: self.sweep().apply({"alpha": alpha}),
        )


def split_id(s: Split) -> str:
    return f"{s.dataset.name}:{s.role}"


def first_stage_split(
    exp: Experiment,
    ds: Dataset,
    role: str,
    opts: RunOptions,
    timer: StageTimer,
    indexes: dict[str, Any],
) -> Split:
    kind = catalog().first_stage(exp.first_stage)
    params = dict(exp.first_stage_params)
    if "language" in params and params["language"] is None:
        params["language"] = ds.language
    fs_key = cache_key(
        "first-stage", exp.first_stage, params, ds.fingerprint(), ds.queries_fingerprint(), exp.k
    )
    run = opts.cache.load_run("first_stage", fs_key, f"{exp.first_stage}/{ds.name}:{role}")
    if run is None:
        with timer("first stage"):
            ikey = cache_key(exp.first_stage, params, ds.fingerprint())
            if ikey not in indexes:
                indexes[ikey] = kind.build(ds.corpus, params, opts.cache.index_dir())
            run = indexes[ikey].search(ds.queries, exp.k)
        opts.cache.save_run("first_stage", fs_key, run)
    return Split(ds, run, fs_key, role)


def run_experiment(reg: Registry, name: str, opts: RunOptions) -> dict[str, Any]:
    """Run one experiment end to end; returns the results dict that reports render."""
    from mergekit_ir.evaluation.fusion import fuse, tune_fusion
    from mergekit_ir.evaluation.metrics import evaluate, mean_scores
    from mergekit_ir.evaluation.significance import mark_improvements
    from mergekit_ir.reports.render import write_reports

    exp = reg.experiment(name)
    timer = StageTimer()
    started = time.time()
    dataset_names = selected_datasets(exp, opts.datasets)

    # 1. data and first stage
    tests: dict[str, Split] = {}
    devs: dict[str, Split] = {}
    indexes: dict[str, Any] = {}
    for dname in dataset_names:
        spec = reg.dataset(dname)
        with timer("loading"):
            test_ds = load_dataset(spec, spec.test, reg, opts.cache)
        opts.echo(
            f"dataset {dname}: {len(test_ds.corpus)} docs, {len(test_ds.queries)} test queries"
            + (f", dev split '{spec.dev}'" if spec.dev else " (no dev split: zero-shot α = 1)")
        )
        tests[dname] = first_stage_split(exp, test_ds, "test", opts, timer, indexes)
        if spec.dev and (exp.tune_alpha or exp.tune_fusion):
            with timer("loading"):
                dev_ds = load_dataset(spec, spec.dev, reg, opts.cache)
            devs[dname] = first_stage_split(exp, dev_ds, "dev", opts, timer, indexes)

    fixed = dict(exp.fusion_params)

    def fused(bm25: Run, model: Run, params: dict) -> Run:
        with timer("fusion"):
            return fuse(
                [bm25, model], method=exp.fusion_method, norm=exp.fusion_norm, params=params
            )

    def judged(split: Split) -> dict[str, dict[str, int]]:
        """The qrels evaluated: all judged queries, or (as beir did) those BM25 retrieved anything for."""
        qrels = split.dataset.qrels
        if exp.eval_queries == "retrieved":
            return {q: r for q, r in qrels.items() if split.first_stage.get(q)}
        return qrels

    def objective(split: Split, run: Run) -> float:
        with timer("evaluation"):
            return mean_scores(evaluate(judged(split), run, [exp.objective]))[exp.objective]

    results: dict[str, Any] = {
        "experiment": name,
        "metrics": list(exp.metrics),
        "datasets": dataset_names,
        "sections": [],
        "alpha_ablation": {},
        "fusion": {},
    }
    all_runs: dict[str, Run] = {}

    for tname in exp.triplets:
        triplet = reg.triplet(tname)
        opts.echo(f"triplet {tname} ({triplet.scorer}): ΘT={triplet.ir.describe()}")
        runner = TripletRunner(exp, triplet, reg, opts, timer)
        # 2. α sweep on dev
        ablation: dict[str, dict[str, float]] = {}
        best_alpha: dict[str, Any] = {d: 1.0 for d in dataset_names}
        if exp.tune_alpha and devs:
            for alpha in exp.alphas:
                for dname, split in devs.items():
                    run = runner.merged_run(alpha, split)
                    ablation.setdefault(dname, {})[alpha_label(alpha)] = objective(
                        split, fused(split.first_stage, run, fixed)
                    )
            means = {
                alpha_label(a): sum(ablation[d][alpha_label(a)] for d in devs) / len(devs)
                for a in exp.alphas
            }
            best = max(exp.alphas, key=lambda a: (means[alpha_label(a)], -exp.alphas.index(a)))
            for dname in dataset_names:
                if dname in devs or exp.transfer_alpha:
                    best_alpha[dname] = best
            opts.echo(
                f"  tuned α = {alpha_label(best)} (mean dev {exp.objective} {means[alpha_label(best)]:.4f})"
            )
            results["alpha_ablation"][tname] = {
                "metric": exp.objective,
                "split": "dev",
                "values": ablation,
                "mean": means,
                "best": alpha_label(best),
            }
        # 3. baselines and merged variants on test (and dev when λ is tuned)
        need_dev = list(devs.values()) if exp.tune_fusion else []
        baselines = runner.baseline_runs(list(tests.values()) + need_dev)
        variants: dict[str, dict[str, Run]] = dict(baselines)
        variants["merged@1"] = {}
        variants["merged@best"] = {}
        for dname, split in tests.items():
            variants["merged@1"][split_id(split)] = runner.merged_run(1.0, split)
            variants["merged@best"][split_id(split)] = runner.merged_run(best_alpha[dname], split)
            if exp.tune_fusion and dname in devs:
                variants["merged@1"][split_id(devs[dname])] = runner.merged_run(1.0, devs[dname])
                variants["merged@best"][split_id(devs[dname])] = runner.merged_run(
                    best_alpha[dname], devs[dname]
                )
        # 4. fusion, evaluation
        labels = {
            "bm25": "BM25",
            "pretrained": "Θ0",
            "domain": "ΘD",
            "ir": "ΘT",
            "merged@1": "Θ' (α=1)",
        }
        distinct_best = {alpha_label(best_alpha[d]) for d in dataset_names}
        labels["merged@best"] = (
            f"Θ' (α={distinct_best.pop()})" if len(distinct_best) == 1 else "Θ' (tuned α)"
        )
        rows = []
        for key in ["bm25", *[k for k in variants if k not in CANDIDATE_KEYS], *CANDIDATE_KEYS]:
            row: dict[str, Any] = {
                "label": labels.get(key, f"ΘD{key.removeprefix('domain')}"),
                "key": key,
                "kind": "merged" if key in CANDIDATE_KEYS else "baseline",
                "alpha": None,
                "cells": {},
            }
            if key == "merged@1":
                row["alpha"] = 1.0
            elif key == "merged@best":
                row["alpha"] = {d: alpha_label(best_alpha[d]) for d in dataset_names}
            for dname, split in tests.items():
                sid = split_id(split)
                if key == "bm25":
                    final, lam = split.first_stage, None
                else:
                    model_run = variants[key][sid]
                    lam = fixed
                    if exp.tune_fusion and dname in devs:
                        with timer("fusion"):
                            lam = tune_fusion(
                                judged(devs[dname]),
                                [devs[dname].first_stage, variants[key][split_id(devs[dname])]],
                                method=exp.fusion_method,
                                norm=exp.fusion_norm,
                                metric=exp.objective,
                            )
                    final = fused(split.first_stage, model_run, dict(lam))
                    with timer("evaluation"):
                        row.setdefault("unfused", {})[dname] = mean_scores(
                            evaluate(judged(split), model_run, list(exp.metrics))
                        )
                    results["fusion"].setdefault(tname, {}).setdefault(key, {})[dname] = {
                        k: list(v) if isinstance(v, tuple | list) else v
                        for k, v in dict(lam).items()
                    }
                with timer("evaluation"):
                    per_query = evaluate(judged(split), final, list(exp.metrics))
                    means = mean_scores(per_query)
                row["cells"][dname] = {
                    m: {"mean": means[m], "per_query": per_query[m], "significant": False}
                    for m in exp.metrics
                }
                all_runs[f"{tname}/{dname}/{key}"] = final
            rows.append(row)
        section = {"triplet": tname, "rows": rows}
        with timer("evaluation"):
            present = [r["key"] for r in rows]
            mark_improvements(
                section,
                baselines=[k for k in present if k not in CANDIDATE_KEYS],
                candidates=list(CANDIDATE_KEYS),
                metrics=list(exp.metrics),
                max_p=exp.max_p,
                test=exp.significance_test,
                correction=exp.correction,
                comparisons=exp.comparisons,
            )
        results["sections"].append(section)

    if exp.reported:
        results["reported"] = compare_reported(results, exp.reported)

    # 5. outputs
    with timer("reporting"):
        out = opts.out_dir
        for rid, run in all_runs.items():
            write_trec(
                out / "runs" / f"{rid.replace('@', '_at_')}.trec", run, rid.replace("/", "_")
            )
        results["manifest"] = manifest(exp, reg, opts, started)
        # Rendered from the JSON round trip, exactly what `mergeir report` will read back.
        written = write_reports(json.loads(json.dumps(results, sort_keys=True, default=str)), out)
    results["manifest"]["timings"] = {k: round(v, 3) for k, v in timer.seconds.items()}
    atomic.write_text(
        out / "results.json", json.dumps(results, indent=1, sort_keys=True, default=str)
    )
    results["_written"] = [str(p) for p in [*written, out / "results.json"]]
    results["_timer"] = timer
    return results


def manifest(exp: Experiment, reg: Registry, opts: RunOptions, started: float) -> dict[str, Any]:
    checkpoints = {}
    for tname in exp.triplets:
        t = reg.triplet(tname)
        for role, ref in [
            ("ir", t.ir),
            ("pretrained", t.pretrained),
            *[(f"domain{i + 1}", d) for i, d in enumerate(t.domains)],
        ]:
            if ref is None:
                continue
            entry: dict[str, Any] = {"ref": ref.ref, "kind": ref.kind, "revision": ref.revision}
            try:
                folder = resolve_ref_folder(ref, reg, opts.cache)
                if ref.kind == "checkpoint":
                    entry["fingerprint"] = open_checkpoint(str(folder)).fingerprint()
            except Exception as exc:  # the manifest must not fail a finished run
                entry["error"] = str(exc)
            checkpoints[f"{tname}.{role}"] = entry
    device = str(ScoringSettings(opts.device).torch_device)
    return {
        "experiment": asdict(exp),
        "registry": str(reg.path),
        "checkpoints": checkpoints,
        "packages": installed_distributions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": device,
        "cuda": torch.cuda.get_device_name() if device.startswith("cuda") else None,
        "seed": exp.seed,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "cache": {
            "dir": str(opts.cache.root),
            "enabled": opts.cache.enabled,
            "hits": opts.cache.hits(),
            "misses": opts.cache.misses(),
        },
        "command": " ".join(sys.argv),
    }
