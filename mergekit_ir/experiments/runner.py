"""The experiment runner: one experiment from registry to report, in named steps.

:class:`ExperimentRun` runs these steps; each is a method, so a new tuning strategy or
executor replaces one step and leaves the others alone:

1. :meth:`~ExperimentRun.prepare_splits`: load each dataset's test (and dev) split and run
   the first stage (cached);
2. :meth:`~ExperimentRun.tune_alpha`: sweep α in place on the loaded ΘT over the dev
   split(s) and pick α on the dev objective;
3. :meth:`~ExperimentRun.model_rankings`: re-rank with Θ0, ΘD, ΘT (each loaded once, runs
   cached) and Θ' at α = 1 and the tuned α;
4. :meth:`~ExperimentRun.build_section`: fuse each model run with the first stage (λ fixed
   or tuned on dev), evaluate, and mark significant improvements over the best baseline;
5. :meth:`~ExperimentRun.write_outputs`: reports, TREC runs and ``results.json``, written
   as one atomic step.

:class:`TripletRunner` owns one triplet's models: ΘT is loaded once and every Θ'(α) is
applied to it in place (:meth:`InPlaceSweep.merged`), never reloaded.
"""

from __future__ import annotations

import json
import logging
import platform
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

import torch

from mergekit_ir.errors import CheckpointError, ConfigError
from mergekit_ir.evaluation.datasets import Dataset
from mergekit_ir.evaluation.first_stage import FirstStageKind
from mergekit_ir.evaluation.trec_runs import write_trec
from mergekit_ir.execution import FirstStageJobs, TripletJobs, TripletOutcome, first_stage_offload
from mergekit_ir.experiments.data_aware import CorpusStatistics
from mergekit_ir.experiments.dry_run import scorer_caveat
from mergekit_ir.experiments.recipe import prepare_recipe_merge, roles, write_recipe_merge
from mergekit_ir.experiments.registry import Experiment, Registry, Triplet
from mergekit_ir.experiments.sources import (
    DomainBuilder,
    domain_input,
    load_dataset,
    local_inputs,
    resolve_ref,
)
from mergekit_ir.experiments.splits import Split, WorkerSetup, wire_splits
from mergekit_ir.merging.alignment import AlignmentRules
from mergekit_ir.merging.checkpoint import open_checkpoint
from mergekit_ir.merging.engine import MergeJob, build_plan
from mergekit_ir.merging.sweep import InPlaceSweep
from mergekit_ir.merging.task_vector import TaskVector
from mergekit_ir.plugin_host import catalog, installed_distributions
from mergekit_ir.ranking import Ranking
from mergekit_ir.results import (
    CANDIDATE_KEYS,
    IR,
    MERGED_AT_1,
    MERGED_BEST,
    PRETRAINED,
    AlphaAblation,
    Cell,
    Results,
    Row,
    Section,
    TunedAlpha,
    alpha_display,
    alpha_label,
    point_params,
    row_label,
)
from mergekit_ir.scoring.devices import device_identity, load_on_devices, parse_devices
from mergekit_ir.scoring.scorer import (
    STRICT_NOTE,
    Scorer,
    ScoringSettings,
    resolve_device,
    resolve_dtype,
)
from mergekit_ir.storage import atomic
from mergekit_ir.storage.cache import Cache, cache_key
from mergekit_ir.storage.fingerprint import folder_fingerprint
from mergekit_ir.storage.output_folder import OutputKind, check_output

log = logging.getLogger(__name__)


@dataclass
class PassCounter:
    """Numbers the model passes of a run (``pass 3/15``) for progress bars and the log."""

    total: int = 0
    done: int = 0
    seconds: float = 0.0  # spent in finished passes, for the ETA

    def next_label(self, what: str) -> str:
        self.done += 1
        total = max(self.total, self.done)
        return f"pass {self.done}/{total} · {what}"

    def finished(self, label: str, seconds: float) -> str:
        """The log line of a finished pass, with an ETA from the mean pass so far."""
        self.seconds += seconds
        left = max(self.total - self.done, 0)
        eta = f", ≤ {left} left, ETA ≤ {left * self.seconds / self.done:.0f}s" if left else ""
        return f"{label}: {seconds:.1f}s{eta}"


@dataclass
class RunOptions:
    out_dir: Path
    cache: Cache
    device: str = "auto"
    datasets: tuple[str, ...] | None = None
    progress: bool = True
    batch_size: int | None = None
    dtype: str | None = None
    strict: bool = False  # refuse what would be a warning (a randomly initialised head)
    echo: Callable[[str], None] = print
    backend: str | None = None  # --backend; None: the experiment's scoring.backend
    passes: PassCounter = field(default_factory=PassCounter)
    executor: Any = None  # an Executor (mergekit_ir.execution); None: the `local` plugin's


@dataclass
class StageTimer:
    """Time per stage (summed over workers when jobs run elsewhere) and the run's wall time."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    wall: float | None = None

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
        rows.append(f"  {'total':<13} {total:8.2f}s")
        if self.wall is not None:
            rows.append(f"  {'wall':<13} {self.wall:8.2f}s")
        return "\n".join(["stage timings:", *rows])

    def add(self, seconds: Mapping[str, float]) -> None:
        """Add a worker's stage times (the table then sums worker time)."""
        for k, v in seconds.items():
            self.seconds[k] += v


class BuiltSection(NamedTuple):
    """Step 4's result for one triplet (see :meth:`ExperimentRun.build_section`)."""

    section: Section
    rankings: dict[str, Ranking]
    fusion: dict[str, dict[str, dict[str, Any]]]


@dataclass
class RunOutcome:
    """What a finished run hands back: its results, the files it wrote and where time went."""

    results: Results
    written: list[Path]
    timer: StageTimer


def split_id(s: Split) -> str:
    return s.id


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


def resolved_settings(exp: Experiment, opts: RunOptions) -> ScoringSettings:
    """Scoring settings with the device checked now, before any work (not after a long run);
    with several devices (``--device cuda:0,cuda:1``), the first one's."""
    settings = ScoringSettings(
        parse_devices(opts.device)[0],
        opts.dtype or exp.dtype,
        opts.batch_size or exp.batch_size,
        opts.progress,
        strict=opts.strict,
        backend=opts.backend or exp.backend,
        cache_dir=opts.cache.root,
    )
    resolve_dtype(settings.dtype, resolve_device(settings.device))
    settings.check_backend(
        "--backend" if opts.backend else f"experiments.{exp.name}.scoring.backend"
    )
    return settings


def settings_identity(settings: ScoringSettings, auto_backend: str = "torch") -> dict[str, Any]:
    """The resolved settings that can change a score: part of every model-run cache key.
    ``auto_backend`` is the scorer kind's choice under ``--backend auto``."""
    device = settings.torch_device
    identity = {
        "device": device.type,
        # e.g. float32; a calibrated auto bf16 (which may fall back to fp32) is its own entry
        "dtype": settings.dtype_identity,
        "batch_size": settings.batch_size,
    }
    backend = settings.backend_identity(auto_backend)
    if backend is not None:  # torch keeps the keys it always had
        identity["backend"] = backend
    return identity


def ranks_candidates(ranking: Ranking, candidates: Ranking) -> bool:
    """A model's ranking scores exactly the first stage's candidates (what a cached entry of it
    must hold: ``{}`` or a truncated copy would otherwise pass for a result). A query the first
    stage found nothing for may be absent or present with no documents: scorers differ there."""
    wanted = {q: docs for q, docs in candidates.items() if docs}
    ranked = {q: docs for q, docs in ranking.items() if docs}
    return set(ranked) == set(wanted) and all(set(ranked[q]) == set(d) for q, d in wanted.items())


def _is_zero(alpha: Any) -> bool:
    return isinstance(alpha, int | float) and not isinstance(alpha, bool) and alpha == 0


class TripletRunner:
    """Runs every variant of one triplet; loads each model at most once."""

    def __init__(
        self, exp: Experiment, triplet: Triplet, reg: Registry, opts: RunOptions, timer: StageTimer
    ):
        self.exp, self.triplet, self.reg, self.opts, self.timer = exp, triplet, reg, opts, timer
        cat = catalog()
        self.kind = cat.scorer(triplet.scorer, f"triplets.{triplet.name}.scorer.kind")
        self.method = cat.merge_method(exp.method, f"experiments.{exp.name}.merge.method")
        self.settings = resolved_settings(exp, opts)
        self.devices = parse_devices(opts.device)  # several: one scorer copy per device
        base, cache_root = reg.base_dir, opts.cache.root
        with timer("loading"):
            self.ir_folder = resolve_ref(triplet.ir, base, cache_root)
            if self.kind.check:
                self.kind.check(self.ir_folder)
            scorer_caveat(self.kind, self.ir_folder, "ΘT", opts.strict)  # as the dry run does
            self.ir_source = open_checkpoint(str(self.ir_folder))
            self.pre_folder = (
                resolve_ref(triplet.pretrained, base, cache_root) if triplet.pretrained else None
            )
            self.pre_source = open_checkpoint(str(self.pre_folder)) if self.pre_folder else None
            builder = DomainBuilder(self.settings.torch_device, opts.echo, opts.progress)
            self.domain_inputs = [
                domain_input(reg, triplet, d, cache_root, builder) for d in triplet.domains
            ]
            self.domain_folders = [d.folder for d in self.domain_inputs]
        self.fp_dir = opts.cache.root / "fingerprints"  # digests live with the run's cache
        self.fingerprints = {IR: self.ir_source.fingerprint(self.fp_dir)}
        if self.pre_source is not None:
            self.fingerprints[PRETRAINED] = self.pre_source.fingerprint(self.fp_dir)
        self._vectors: list[TaskVector] | None = None
        self._ir_scorer: Scorer | None = None
        self._sweep: InPlaceSweep | None = None
        self._recipe_scorer: Scorer | None = None
        self._memo: dict[str, Ranking] = {}  # identical models score once, also with --no-cache
        #: a data-aware method's statistics (regmean), gathered per corpus before merging
        self.corpus_stats = (
            CorpusStatistics(
                self.method,
                exp.merge_params,
                opts.cache.root,
                device=self.settings.torch_device,
                reuse=opts.cache.enabled,
                progress=opts.progress,
                echo=opts.echo,
                where=f"experiments.{exp.name}.merge.method",
            )
            if self.method.statistics
            else None
        )
        self.notes: dict[str, None] = {}  # scorer warnings, in first-seen order, for the report

    # -- models -------------------------------------------------------------------------------
    def vectors(self) -> list[TaskVector]:
        if self._vectors is None:
            sources = {"pretrained": self.pre_source, "ir": self.ir_source}
            self._vectors = [
                TaskVector.from_reference(d.kind, d.folder, sources[d.against])
                for d in self.domain_inputs
            ]
        return self._vectors

    @cached_property
    def vector_fingerprints(self) -> list[str]:
        fps = []
        for ref, folder in zip(self.triplet.domains, self.domain_folders, strict=True):
            if ref.is_model:
                suffix = ":from-ir" if ref.adapt is not None and ref.adapt.base == "ir" else ""
                fps.append(open_checkpoint(str(folder)).fingerprint(self.fp_dir) + suffix)
            elif ref.kind == "adapt":
                fps.append(folder_fingerprint(folder, salt="lora", cache_dir=self.fp_dir))
            else:  # content-addressed, like checkpoints: the same adapter anywhere is one entry
                fps.append(folder_fingerprint(folder, salt=ref.kind, cache_dir=self.fp_dir))
        return fps

    def load_scorer(self, folder: Path) -> Scorer:
        if self.kind.check:
            self.kind.check(folder)

        def load(settings: ScoringSettings) -> Scorer:
            torch.manual_seed(self.exp.seed)  # heads a checkpoint lacks: initialised reproducibly
            return self.kind.load(folder, self.triplet.scorer_options, settings)

        # one copy per device with --device cuda:0,cuda:1 (mergekit_ir.scoring.devices)
        return load_on_devices(load, self.settings, self.devices)  # type: ignore[return-value]

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

    # -- a mergekit recipe's Θ' (merge: {mergekit: recipe.yml}) ---------------------------------
    @cached_property
    def recipe_identity(self) -> list[Any]:
        """What the recipe's Θ' is made of: the recipe's text and its models' contents."""
        recipe = self.exp.mergekit_recipe
        assert recipe is not None
        fps = {}
        for m in recipe.inputs():
            try:
                src = open_checkpoint(m.ref, m.revision, self.reg.base_dir, self.opts.cache.root)
            except CheckpointError as exc:
                raise CheckpointError(f"{recipe.label}: {m.where}.model: {exc}") from None
            fps[m.where] = src.fingerprint(self.fp_dir)
        return ["mergekit-recipe", recipe.text, fps]

    def recipe_folder(self) -> Path:
        """The recipe's Θ' as ``mergeir merge --mergekit-config`` writes it (the same code),
        written once into the cache and reused while the recipe and its models are unchanged."""
        recipe = self.exp.mergekit_recipe
        assert recipe is not None
        folder = self.opts.cache.root / "recipe-merge" / cache_key(*self.recipe_identity)
        if not (folder / "mergekit_config.yml").is_file():  # written last: a complete merge
            with self.timer("merge"):
                prepared = prepare_recipe_merge(
                    recipe, cache_root=self.opts.cache.root, base_dir=self.reg.base_dir
                )
                c = prepared.plan.counts()
                self.opts.echo(
                    f"  mergekit recipe {recipe.label}: {c['merge']} merged, {c['copy']} copied "
                    f"from ΘT, {c['skip']} skipped -> {folder}"
                )
                write_recipe_merge(prepared, folder, overwrite=True, progress=self.opts.progress)
        return folder

    def recipe_scorer(self) -> Scorer:
        if self._recipe_scorer is None:
            folder = self.recipe_folder()
            with self.timer("loading"):
                self._recipe_scorer = self.load_scorer(folder)
        return self._recipe_scorer

    def recipe_ranking(self, split: Split) -> Ranking:
        """The recipe's Θ' on ``split`` (from the cache when it is there: no merge then)."""
        return self.model_ranking(
            "Θ' (mergekit recipe)", self.recipe_identity, split, self.recipe_scorer
        )

    def recipe_notes(self) -> list[str]:
        """What the report says about a recipe's Θ': where it came from, that no α was tuned,
        and which of its models are not this triplet's checkpoints."""
        recipe = self.exp.mergekit_recipe
        if recipe is None:
            return []
        r = roles(recipe)
        notes = [
            f"{recipe_row_label(self.exp)} is mergekit recipe {recipe.label}'s merge "
            f"(merge_method {recipe.merge_method}, as mergekit-ir's {r.method}; the same tensors "
            "as `mergeir merge --mergekit-config`); no α was tuned"
        ]
        mine = {*self.fingerprints.values(), *self.vector_fingerprints}
        foreign = [m.text for m in recipe.inputs() if self.recipe_identity[2][m.where] not in mine]
        if foreign:
            notes.append(
                f"the recipe merges models that are not this triplet's checkpoints "
                f"({', '.join(foreign)}): the baseline rows are the triplet's, not its inputs"
            )
        return notes

    # -- runs ---------------------------------------------------------------------------------
    def _rerank(self, scorer: Scorer, split: Split) -> Ranking:
        ds = split.dataset
        docs = {d: ds.corpus[d].full_text for q in split.first_stage.values() for d in q}
        queries = {q: ds.queries[q] for q in split.first_stage}
        with self.timer("scoring"):
            run = scorer.rerank(queries, split.first_stage, docs)
        return run

    def model_ranking(
        self,
        variant: str,
        identity: list[Any],
        split: Split,
        scorer_fn: Callable[[], Scorer],
        merged: Mapping[str, Any] | None = None,
    ) -> Ranking:
        """One model's run on one split, from the cache when it is there.

        ``identity`` says which weights score (fingerprints, merge settings); ``merged``
        holds the merge parameters when the weights are Θ'(α) applied in place on ΘT.
        """
        key = cache_key(
            "model-run",
            self.triplet.scorer,
            dict(self.triplet.scorer_options),
            settings_identity(self.settings, getattr(self.kind.load, "auto_backend", "torch"))
            | device_identity(self.devices),
            identity,
            split.fs_key,
            split.dataset.queries_fingerprint(),
        )
        if key in self._memo:
            return self._memo[key]
        label = f"{self.triplet.name}/{variant}/{split.dataset.name}:{split.role}"
        run = self.opts.cache.load_run(
            "model", key, label, expected=lambda r: ranks_candidates(r, split.first_stage)
        )
        if run is not None:
            for note in self.opts.cache.load_notes(key):  # what the cold run warned about
                if self.opts.strict and note.endswith(STRICT_NOTE):  # as a cold run would
                    raise CheckpointError(
                        f"{note.removesuffix(STRICT_NOTE).rstrip()}; refusing under --strict"
                    )
                if note not in self.notes:
                    log.warning("%s", note)
                self.notes.setdefault(note)
        else:
            scorer = scorer_fn()
            shown = f"Θ' (α={variant.split('@', 1)[1]})" if variant.startswith("merged@") else None
            what = f"{shown or row_label(variant)} · {split.dataset.name}:{split.role}"
            pass_label = self.opts.passes.next_label(what)
            started = time.perf_counter()
            with scorer.labelled(pass_label), self._weights(merged, split):
                run = self._rerank(scorer, split)
            if self.opts.progress:
                self.opts.echo(self.opts.passes.finished(pass_label, time.perf_counter() - started))
            self.opts.cache.save_notes(key, list(scorer.warnings))
            self.notes.update(dict.fromkeys(scorer.warnings))
            self.opts.cache.save_run("model", key, run)
        self._memo[key] = run
        return run

    @contextmanager
    def _weights(
        self, merged: Mapping[str, Any] | None, split: Split | None = None
    ) -> Iterator[None]:
        """ΘT's scorer holds Θ'(merged) inside the block (the sweep's own context, timed as
        merging), and ΘT again after it; ``None`` leaves the weights alone."""
        if merged is None:
            yield
            return
        sweep = self.sweep()
        if self.corpus_stats is not None and split is not None:  # statistics of this corpus
            with self.timer("statistics"):
                self.corpus_stats.attach(sweep.job, sweep.plan, split.dataset)
        with self.timer("merge"):
            held = sweep.merged(merged)
            held.__enter__()
        try:
            yield
        finally:
            with self.timer("merge"):
                held.__exit__(None, None, None)

    def baseline_rankings(self, splits: list[Split]) -> dict[str, dict[str, Ranking]]:
        """variant key -> split id -> run, for Θ0, each ΘD and ΘT."""
        out: dict[str, dict[str, Ranking]] = {}
        singles: list[tuple[str, Path]] = []
        if self.pre_folder is not None:
            singles.append((PRETRAINED, self.pre_folder))
        domain_checkpoints = [
            f for r, f in zip(self.triplet.domains, self.domain_folders, strict=True) if r.is_model
        ]
        singles += list(zip(self.triplet.domain_rows, domain_checkpoints, strict=True))
        for variant, folder in singles:
            holder: dict[str, Scorer] = {}
            fp = open_checkpoint(str(folder)).fingerprint(self.fp_dir)
            if fp == self.fingerprints[IR]:  # the same weights as ΘT: score them once, as ΘT
                out[variant] = {s.id: self.ir_ranking(s) for s in splits}
                continue

            def get(_folder: Path = folder, _holder: dict = holder) -> Scorer:
                if "s" not in _holder:
                    with self.timer("loading"):
                        _holder["s"] = self.load_scorer(_folder)
                return _holder["s"]

            out[variant] = {s.id: self.model_ranking(variant, [fp], s, get) for s in splits}
            holder.clear()
        out[IR] = {s.id: self.ir_ranking(s) for s in splits}
        return out

    def ir_ranking(self, split: Split) -> Ranking:
        return self.model_ranking(IR, [self.fingerprints[IR]], split, self.ir_scorer)

    def merged_ranking(self, alpha: Any, split: Split) -> Ranking:
        """Θ'(α)'s ranking of ``split``; ``alpha`` may be a grid point (α with other swept
        parameters), applied in place on ΘT like a plain α."""
        if _is_zero(alpha) and not self.method.needs_ir_vector:
            # Θ' = ΘT + 0·τ is ΘT: score it once, under ΘT's key. (Methods that also rework
            # ΘT − Θ0, as TIES and DARE do, do not give back ΘT at α = 0.)
            return self.ir_ranking(split)
        identity = [
            self.exp.method,
            dict(self.exp.merge_params),
            alpha_label(alpha),
            self.fingerprints,
            self.vector_fingerprints,
        ]
        rules = self.triplet.alignment
        if self.corpus_stats is not None:  # a data-aware Θ' depends on the corpus it read
            identity.append(self.corpus_stats.identity(split.dataset))
            self.notes.setdefault(self.corpus_stats.note(split.dataset))
        if rules != AlignmentRules():  # tensors copied from ΘT change Θ'(α): part of its key
            identity.append({"copy": list(rules.copy), "skip_missing": rules.skip_missing})
        return self.model_ranking(
            f"merged@{alpha_label(alpha)}", identity, split, self.ir_scorer, point_params(alpha)
        )


class ExperimentRun:
    """One experiment's run, step by step (see the module docstring)."""

    def __init__(self, reg: Registry, name: str, opts: RunOptions):
        self.reg, self.opts = reg, opts
        self.exp = reg.experiment(name)
        self.timer = StageTimer()
        self.started = time.time()
        self.datasets = selected_datasets(self.exp, opts.datasets)
        self.first_stage: FirstStageKind = catalog().first_stage(
            self.exp.first_stage, f"experiments.{name}.first_stage.backend"
        )
        self.settings = resolved_settings(self.exp, opts)  # a bad --device fails here, first
        self.devices = parse_devices(opts.device)  # --device cuda:0,cuda:1: each pass split
        self.tests: dict[str, Split] = {}
        self.devs: dict[str, Split] = {}
        self._indexes: dict[str, Any] = {}
        self.worker_hosts: set[str] = set()  # where triplet jobs ran, when not in this process

    # -- helpers ------------------------------------------------------------------------------
    def fused(self, first: Ranking, model: Ranking, params: Mapping[str, Any]) -> Ranking:
        from mergekit_ir.evaluation.fusion import fuse

        with self.timer("fusion"):
            return fuse(
                [first, model],
                method=self.exp.fusion_method,
                norm=self.exp.fusion_norm,
                params=dict(params),
            )

    def judged(self, split: Split) -> dict[str, dict[str, int]]:
        """The qrels evaluated: all judged queries, or (as beir did) those the first stage
        retrieved anything for."""
        qrels = split.dataset.qrels
        if self.exp.eval_queries == "retrieved":
            return {q: r for q, r in qrels.items() if split.first_stage.get(q)}
        return qrels

    def evaluate(
        self, split: Split, run: Ranking, metrics: Sequence[str]
    ) -> dict[str, dict[str, float]]:
        from mergekit_ir.evaluation.metrics import evaluate

        with self.timer("evaluation"):
            return evaluate(self.judged(split), run, list(metrics))

    def objective(self, split: Split, run: Ranking) -> float:
        from mergekit_ir.evaluation.metrics import mean_scores

        return mean_scores(self.evaluate(split, run, [self.exp.objective]))[self.exp.objective]

    def first_stage_key(self, ds: Dataset) -> str:
        exp = self.exp
        return cache_key(
            "first-stage",
            exp.first_stage,
            dict(exp.first_stage_params),
            ds.language,
            ds.fingerprint(),
            ds.queries_fingerprint(),
            exp.k,
        )

    def first_stage_split(self, ds: Dataset, role: str, run: Ranking | None = None) -> Split:
        """``ds`` with its first-stage run: ``run`` when an executor computed it, else from
        the cache, else retrieved here (and cached)."""
        exp, opts = self.exp, self.opts
        params = dict(exp.first_stage_params)
        fs_key = self.first_stage_key(ds)
        if run is None:
            run = opts.cache.load_run(
                "first_stage",
                fs_key,
                f"{exp.first_stage}/{ds.name}:{role}",
                expected=lambda r: set(r) == set(ds.queries),
            )
        if run is None:
            opts.echo(f"first stage {exp.first_stage} · {ds.name}:{role}: {len(ds.corpus):,} docs")
            with self.timer("first stage"):
                ikey = cache_key(exp.first_stage, params, ds.language, ds.fingerprint())
                if ikey not in self._indexes:
                    self._indexes[ikey] = self.first_stage.build(
                        ds.corpus, params, opts.cache.index_dir(), language=ds.language
                    )
                run = self._indexes[ikey].search(ds.queries, exp.k)
            opts.cache.save_run("first_stage", fs_key, run)
        return Split(ds, run, fs_key, role)

    def load_split(self, dname: str, role: str) -> Dataset:
        spec = self.reg.dataset(dname)
        with self.timer("loading"):
            return load_dataset(
                spec,
                spec.test if role == "test" else spec.dev,
                self.reg.base_dir,
                self.opts.cache.root,
            )

    # -- 1. data and first stage ----------------------------------------------------------------
    def prepare_splits(self) -> None:
        """Load every split here (the report needs them) and run its first stage — through
        the executor when it offers ``first_stages`` (one job per split not in the cache)."""
        exp, reg, opts = self.exp, self.reg, self.opts
        loaded: dict[tuple[str, str], Dataset] = {}
        for dname in self.datasets:
            spec = reg.dataset(dname)
            test_ds = loaded[(dname, "test")] = self.load_split(dname, "test")
            opts.echo(
                f"dataset {dname}: {len(test_ds.corpus)} docs, {len(test_ds.queries)} test queries"
                + (f", dev split '{spec.dev}'" if spec.dev else " (no dev split: zero-shot α = 1)")
            )
            if spec.dev and (exp.tune_alpha or exp.tune_fusion):
                loaded[(dname, "dev")] = self.load_split(dname, "dev")
        remote: dict[tuple[str, str], Ranking] = {}
        offload = first_stage_offload(opts.executor)
        if offload is not None:
            todo = tuple(
                job
                for job, ds in loaded.items()
                if not opts.cache.has_run("first_stage", self.first_stage_key(ds))
            )
            if todo:
                remote = dict(
                    offload(FirstStageJobs(todo, exp.first_stage, self.worker_setup, opts.echo))
                )
        for (dname, role), ds in loaded.items():
            split = self.first_stage_split(ds, role, remote.get((dname, role)))
            (self.tests if role == "test" else self.devs)[dname] = split

    # -- 2. α on dev ----------------------------------------------------------------------------
    def tune_alpha(self, runner: TripletRunner) -> TunedAlpha:
        """α per dataset: the α grid's best mean dev objective (λ fixed), else α = 1.

        Ties go to the earlier α in the grid. ``tuning.search: halving`` searches the grid on
        query subsets instead (:mod:`mergekit_ir.experiments.dev_search`).
        """
        exp = self.exp
        untuned = TunedAlpha({d: 1.0 for d in self.datasets})
        if not (exp.tune_alpha and self.devs):
            return untuned
        if exp.search.method != "grid":
            from mergekit_ir.experiments.dev_search import search_alpha

            return search_alpha(self, runner)
        fixed = dict(exp.fusion_params)
        values: dict[str, dict[str, float]] = {}
        for alpha in exp.alphas:
            for dname, split in self.devs.items():
                run = runner.merged_ranking(alpha, split)
                values.setdefault(dname, {})[alpha_label(alpha)] = self.objective(
                    split, self.fused(split.first_stage, run, fixed)
                )
        means = {
            alpha_label(a): sum(values[d][alpha_label(a)] for d in self.devs) / len(self.devs)
            for a in exp.alphas
        }
        best = max(exp.alphas, key=lambda a: (means[alpha_label(a)], -exp.alphas.index(a)))
        chosen = {d: best if d in self.devs or exp.transfer_alpha else 1.0 for d in self.datasets}
        self.opts.echo(
            f"  tuned α = {alpha_display(alpha_label(best))} "
            f"(mean dev {exp.objective} {means[alpha_label(best)]:.4f})"
        )
        # Reference lines for the α plot: ΘT (α = 0) and the first stage alone, on the same splits.
        references = {
            dname: {
                "BM25": self.objective(split, split.first_stage),
                "ΘT": self.objective(
                    split, self.fused(split.first_stage, runner.ir_ranking(split), fixed)
                ),
            }
            for dname, split in self.devs.items()
        }
        return TunedAlpha(
            chosen,
            AlphaAblation(
                metric=exp.objective,
                split="dev",
                values=values,
                mean=means,
                best=alpha_label(best),
                order=[alpha_label(a) for a in exp.alphas],
                references=references,
            ),
        )

    # -- 3. model runs --------------------------------------------------------------------------
    def model_rankings(
        self, runner: TripletRunner, tuned: TunedAlpha
    ) -> dict[str, dict[str, Ranking]]:
        """Row key -> split id -> model run, for the baselines and both Θ' rows (test, and dev
        when λ is tuned there)."""
        exp = self.exp
        need_dev = list(self.devs.values()) if exp.tune_fusion else []
        variants = runner.baseline_rankings(list(self.tests.values()) + need_dev)
        if exp.mergekit_recipe is not None:  # one Θ', the recipe's merge: no α, no α = 1 row
            variants[MERGED_BEST] = {
                s.id: runner.recipe_ranking(s)
                for dname, split in self.tests.items()
                for s in [split]
                + ([self.devs[dname]] if exp.tune_fusion and dname in self.devs else [])
            }
            return variants
        variants[MERGED_AT_1], variants[MERGED_BEST] = {}, {}
        for dname, split in self.tests.items():
            splits = [split] + (
                [self.devs[dname]] if exp.tune_fusion and dname in self.devs else []
            )
            for s in splits:
                variants[MERGED_AT_1][s.id] = runner.merged_ranking(1.0, s)
                variants[MERGED_BEST][s.id] = runner.merged_ranking(tuned.per_dataset[dname], s)
        return variants

    # -- 4. fusion, metrics, significance -------------------------------------------------------
    def fusion_params(self, dname: str, key: str, variants: dict[str, dict[str, Ranking]]) -> Any:
        """λ for one row on one dataset: tuned on its dev split, else the experiment's."""
        exp = self.exp
        if not (exp.tune_fusion and dname in self.devs):
            return dict(exp.fusion_params)
        from mergekit_ir.evaluation.fusion import tune_fusion

        dev = self.devs[dname]
        with self.timer("fusion"):
            return tune_fusion(
                self.judged(dev),
                [dev.first_stage, variants[key][dev.id]],
                method=exp.fusion_method,
                norm=exp.fusion_norm,
                metric=exp.objective,
            )

    def cells(self, split: Split, run: Ranking) -> dict[str, Cell]:
        from mergekit_ir.evaluation.metrics import mean_scores

        per_query = self.evaluate(split, run, self.exp.metrics)
        means = mean_scores(per_query)
        return {m: Cell(mean=means[m], per_query=per_query[m]) for m in self.exp.metrics}

    def build_section(
        self, tname: str, variants: dict[str, dict[str, Ranking]], tuned: TunedAlpha
    ) -> BuiltSection:
        """One triplet's table section, the fused rankings to write as TREC files
        (``triplet/dataset/row``) and the λ each row used; returned, nothing stored."""
        from mergekit_ir.evaluation.metrics import mean_scores
        from mergekit_ir.evaluation.significance import mark_improvements, verdicts

        exp, fs = self.exp, self.first_stage
        distinct_best = {alpha_label(tuned.per_dataset[d]) for d in self.datasets}
        only = distinct_best.pop() if len(distinct_best) == 1 else None
        if only is not None and only.startswith("{"):  # a grid point: its parameters spelled out
            best_label = f"Θ' ({alpha_display(only)})"
        else:
            best_label = f"Θ' (α={only})" if only is not None else "Θ' (tuned α)"
        section = Section(tname)
        rankings: dict[str, Ranking] = {}
        fusion: dict[str, dict[str, dict[str, Any]]] = {}
        first_row = Row(key=fs.row_key, label=fs.row_label)
        for dname, split in self.tests.items():
            first_row.cells[dname] = self.cells(split, split.first_stage)
            rankings[f"{tname}/{dname}/{fs.row_key}"] = split.first_stage
        section.rows.append(first_row)
        for key, runs in variants.items():
            row = Row(key=key, label=row_label(key))
            if key in CANDIDATE_KEYS:
                row.kind = "merged"
            if key == MERGED_AT_1:
                row.alpha = 1.0
            elif key == MERGED_BEST and exp.mergekit_recipe is not None:
                row.label = recipe_row_label(exp)  # no α: the recipe's merge (see the notes)
            elif key == MERGED_BEST:
                row.label = best_label
                row.alpha = {d: alpha_label(tuned.per_dataset[d]) for d in self.datasets}
                section.tuned_alpha = {d: tuned.per_dataset[d] for d in self.datasets}
            row.unfused = {}
            for dname, split in self.tests.items():
                model_ranking = runs[split.id]
                lam = self.fusion_params(dname, key, variants)
                final = self.fused(split.first_stage, model_ranking, lam)
                row.unfused[dname] = mean_scores(self.evaluate(split, model_ranking, exp.metrics))
                fusion.setdefault(key, {})[dname] = {
                    k: list(v) if isinstance(v, tuple | list) else v for k, v in dict(lam).items()
                }
                row.cells[dname] = self.cells(split, final)
                rankings[f"{tname}/{dname}/{key}"] = final
            section.rows.append(row)
        with self.timer("evaluation"):
            present = [r.key for r in section.rows]
            section.verdicts = verdicts(
                section,
                candidates=[MERGED_BEST, MERGED_AT_1],
                baselines=[k for k in present if k not in CANDIDATE_KEYS],
                theta_t=IR,
                datasets=list(self.tests),
                metrics=list(exp.metrics),
                against=exp.significance_against,
                max_p=exp.max_p,
                test=exp.significance_test,
                correction=exp.correction,
                comparisons=exp.comparisons,
            )
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
        return BuiltSection(section, rankings, fusion)

    # -- 5. outputs -----------------------------------------------------------------------------
    def write_outputs(self, results: Results, rankings: Mapping[str, Ranking]) -> list[Path]:
        """Every output into a temporary sibling folder, then one rename: the output folder is
        the previous complete run or the new complete run, never a mix."""
        from mergekit_ir.reports.render import write_reports

        out = self.opts.out_dir
        with atomic.directory(out, overwrite=True) as tmp:
            with self.timer("reporting"):
                for rid, run in rankings.items():
                    write_trec(
                        tmp / "runs" / f"{rid.replace('@', '_at_')}.trec",
                        run,
                        rid.replace("/", "_"),
                    )
                results.manifest = manifest(self.exp, self.reg, self.opts, self.started)
                if self.worker_hosts:
                    results.manifest["worker_hosts"] = sorted(self.worker_hosts)
                # Rendered from the JSON round trip, exactly what `mergeir report` reads back.
                written = write_reports(Results.from_json(_json_round_trip(results)), tmp)
            results.manifest["timings"] = {k: round(v, 3) for k, v in self.timer.seconds.items()}
            atomic.write_text(
                tmp / "results.json",
                json.dumps(results.to_json(), indent=1, sort_keys=True, default=str),
            )
            written = [out / p.relative_to(tmp) for p in [*written, tmp / "results.json"]]
        return written

    # -- 2+3 for one triplet: the unit of work an executor runs ---------------------------------
    def triplet_outcome(self, tname: str) -> TripletOutcome:
        """Steps 2 and 3 for one triplet: ΘT and the task vectors loaded once, the whole α
        sweep and the baselines run in place; returns runs, not models."""
        triplet = self.reg.triplet(tname)
        self.opts.echo(f"triplet {tname} ({triplet.scorer}): ΘT={triplet.ir.describe()}")
        runner = TripletRunner(self.exp, triplet, self.reg, self.opts, self.timer)
        tuned = self.tune_alpha(runner)
        selection = None
        if self.exp.alpha_selectors:  # tuning.alpha: {selector: ...}: selectors pick α
            from mergekit_ir.experiments.selection import select_alpha

            selection, tuned = select_alpha(self, runner, tuned)
        variants = self.model_rankings(runner, tuned)
        runner.notes.update(dict.fromkeys(runner.recipe_notes()))
        return TripletOutcome(tname, tuned, variants, notes=list(runner.notes), selection=selection)

    def worker_setup(self) -> WorkerSetup:
        """What a worker process needs to run this run's jobs (picklable, once per worker)."""
        opts = self.opts
        return WorkerSetup(
            registry=self.reg,
            experiment=self.exp.name,
            cache_root=opts.cache.root,
            cache_enabled=opts.cache.enabled,
            device=opts.device,
            datasets=tuple(self.datasets),
            batch_size=opts.batch_size,
            dtype=opts.dtype,
            strict=opts.strict,
            backend=opts.backend,
        )

    def absorb(self, outcome: TripletOutcome) -> None:
        """Fold a job that ran elsewhere into this run: its echo, stage times and cache log."""
        for line in outcome.messages:
            self.opts.echo(line)
        self.timer.add(outcome.timings)
        self.opts.cache.events.extend(outcome.cache_events)
        if outcome.host:
            self.worker_hosts.add(outcome.host)

    # -- all steps ------------------------------------------------------------------------------
    def run(self) -> RunOutcome:
        from mergekit_ir.experiments.dry_run import count_passes
        from mergekit_ir.reports.reported import compare as compare_reported

        check_output_folder(self.opts.out_dir, run_inputs(self.reg, self.exp, self.opts.cache.root))
        wall_start = time.perf_counter()
        self.prepare_splits()
        self.opts.passes.total = sum(  # an upper bound: cache hits and reuse make it smaller
            sum(
                count_passes(
                    self.reg, self.exp, t, self.datasets, list(self.devs), partial=True
                ).values()
            )
            for t in self.exp.triplets
        )
        results = Results(
            experiment=self.exp.name, metrics=list(self.exp.metrics), datasets=self.datasets
        )
        rankings: dict[str, Ranking] = {}  # TREC files to write: "triplet/dataset/row"
        executor = self.opts.executor or catalog().executor("local").create({})
        jobs = TripletJobs(
            triplets=tuple(self.exp.triplets),
            run_here=self.triplet_outcome,
            worker_setup=self.worker_setup,
            wire_splits=lambda: wire_splits(self),
            echo=self.opts.echo,
            progress=self.opts.progress,
        )
        for outcome in executor.run_triplets(jobs):
            self.absorb(outcome)
            tname, tuned = outcome.triplet, outcome.tuned
            if tuned.ablation is not None:
                results.alpha_ablation[tname] = tuned.ablation
            if outcome.selection is not None:
                results.alpha_selection[tname] = outcome.selection
            built = self.build_section(tname, outcome.variants, tuned)
            built.section.notes = list(outcome.notes)
            results.sections.append(built.section)
            results.fusion[tname] = built.fusion
            rankings.update(built.rankings)
        if self.exp.reported:
            results.reported = compare_reported(results, self.exp.reported)
        written = self.write_outputs(results, rankings)
        self.timer.wall = time.perf_counter() - wall_start
        return RunOutcome(results, written, self.timer)


def recipe_row_label(exp: Experiment) -> str:
    """The merged row's label when Θ' is a mergekit recipe's merge: ``Θ' (mergekit: x.yml)``."""
    recipe = exp.mergekit_recipe
    return f"Θ' (mergekit: {recipe.path.name})" if recipe is not None else "Θ'"


def _json_round_trip(results: Results) -> dict[str, Any]:
    return json.loads(json.dumps(results.to_json(), sort_keys=True, default=str))


#: What ``mergeir run`` writes, for the output-folder policy: a rerun replaces its own
#: earlier output (marked by results.json) without a flag, and nothing else.
RUN_OUTPUT = OutputKind(
    what="the run's outputs",
    marker="results.json",
    earlier="`mergeir run`",
    overwrite_flag=None,
    error=ConfigError,
)


def run_inputs(reg: Registry, exp: Experiment, cache_root: Path) -> list[tuple[str, Path]]:
    """What a run reads and ``--out`` must stay away from: its local checkpoint and BEIR
    folders, and the cache (replacing an output that holds it would delete the cache)."""
    return [*local_inputs(reg, exp), ("--cache-dir", cache_root)]


def check_output_folder(out: Path, inputs: Sequence[tuple[str, Path]] = ()) -> None:
    """Fail before any work when the run could not write its outputs, or would replace a
    folder that is not an earlier run's (the output-folder policy)."""
    check_output(out, RUN_OUTPUT, inputs=inputs)


def run_experiment(reg: Registry, name: str, opts: RunOptions) -> RunOutcome:
    """Run one experiment end to end (see :class:`ExperimentRun` for its steps)."""
    return ExperimentRun(reg, name, opts).run()


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
            if ref.adapt is not None:
                entry["adapt"] = asdict(ref.adapt)
                checkpoints[f"{tname}.{role}"] = entry
                continue
            try:
                folder = resolve_ref(ref, reg.base_dir, opts.cache.root)
                if ref.kind == "checkpoint":
                    entry["fingerprint"] = open_checkpoint(str(folder)).fingerprint(
                        opts.cache.root / "fingerprints"
                    )
            except Exception as exc:  # the manifest must not fail a finished run
                entry["error"] = str(exc)
            checkpoints[f"{tname}.{role}"] = entry
    settings = resolved_settings(exp, opts)
    device = str(settings.torch_device)
    devices = parse_devices(opts.device)
    return {
        **({"devices": list(devices)} if len(devices) > 1 else {}),
        "experiment": asdict(exp),
        "registry": str(reg.path),
        "checkpoints": checkpoints,
        "packages": installed_distributions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": device,
        "cuda": torch.cuda.get_device_name() if device.startswith("cuda") else None,
        "scoring": settings_identity(settings),
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
