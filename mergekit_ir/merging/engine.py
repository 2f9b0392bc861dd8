"""The streaming merge engine: plan, then merge and write one tensor at a time.

Memory stays at a few tensors: for each ΘT tensor the engine reads it and the
matching task-vector slices, calls the merge method (a pure function), writes the
result straight into a pre-planned safetensors shard, and drops everything.
Output goes to a temporary folder renamed into place at the end, so a crash or a
full disk never leaves a half-written model.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import itertools
import json
import logging
import math
import os
import queue
import shutil
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from mergekit_ir.errors import CheckpointError
from mergekit_ir.merging.alignment import (
    AlignmentRules,
    MergePlan,
    NameIndex,
    PlanEntry,
    is_head,
    vocab_case,
)
from mergekit_ir.merging.allocator import keep_freed_buffers
from mergekit_ir.merging.checkpoint import WEIGHT_SUFFIXES, Rows, TensorSource
from mergekit_ir.merging.finite import all_finite
from mergekit_ir.merging.method import MergeMethod, check_weights
from mergekit_ir.merging.safetensors_writer import ShardedWriter, TensorSpec
from mergekit_ir.merging.task_vector import TaskVector
from mergekit_ir.params import TensorPosition, layer_index, resolve_all
from mergekit_ir.storage import atomic
from mergekit_ir.storage.output_folder import OutputKind, check_output

log = logging.getLogger(__name__)


@dataclass
class MergeJob:
    """Everything one merge needs; nothing is read until the plan or the merge runs."""

    ir: TensorSource
    vectors: list[TaskVector]
    method: MergeMethod
    params: dict[str, Any]
    pretrained: TensorSource | None = None
    rules: AlignmentRules = field(default_factory=AlignmentRules)
    allow_nonfinite: bool = False
    #: a data-aware method's statistics (:class:`mergekit_ir.merging.statistics.StatisticsSet`),
    #: attached once gathered; the α sweep may swap it per corpus
    statistics: Any = None

    def __post_init__(self) -> None:
        if "weights" in self.params:
            check_weights(self.params["weights"], len(self.vectors), "weights")
        self.ir_index = NameIndex.build("ΘT", self.ir.names(), self.ir.config)
        self.p_index = (
            NameIndex.build("Θ0", self.pretrained.names(), self.pretrained.config)
            if self.pretrained is not None
            else None
        )
        if self.method.needs_ir_vector and self.pretrained is None:
            raise CheckpointError(
                f"merge method '{self.method.name}' needs Θ0 (it treats ΘT − Θ0 as a task vector); "
                "give the triplet a 'pretrained' checkpoint"
            )
        if self.pretrained is not None:
            t_type, p_type = (
                self.ir.config.get("model_type"),
                self.pretrained.config.get("model_type"),
            )
            if t_type and p_type and t_type != p_type:
                raise CheckpointError(
                    f"ΘT {self.ir.ref} is a {t_type} model but Θ0 {self.pretrained.ref} is a {p_type} model; "
                    "a triplet needs one architecture"
                )


def build_plan(job: MergeJob) -> MergePlan:
    """Decide merge/copy/skip for every tensor, before any weight is read."""
    entries: list[PlanEntry] = []
    ir = job.ir
    ir_keys = set(job.ir_index.keys())
    for key, name in job.ir_index.names.items():
        info = ir.info(name)
        shape, dtype = info.shape, info.dtype

        def entry(
            action: str,
            reason: str,
            rows: int | None = None,
            _n: str = name,
            _k: str = key,
            _s: tuple = shape,
            _d: torch.dtype = dtype,
        ) -> PlanEntry:
            return PlanEntry(_n, _k, action, reason, _s, _d, rows)

        if not dtype.is_floating_point:
            entries.append(
                entry("copy", f"{str(dtype).removeprefix('torch.')} buffer, never merged")
            )
            continue
        if job.rules.forces_copy(name):
            entries.append(entry("copy", "alignment.copy rule"))
            continue
        shapes = [v.shape(key) for v in job.vectors]
        covered = [s for s in shapes if s is not None]
        if not covered:
            if is_head(key) or job.rules.skip_missing or not any(v.dense for v in job.vectors):
                entries.append(
                    entry(
                        "copy", "only in ΘT (head)" if is_head(key) else "no task vector touches it"
                    )
                )
                continue
            raise CheckpointError(
                f"tensor {name} is in ΘT ({ir.ref}) but not in Θ0/ΘD; if it is a task head, "
                "add its name to the triplet's alignment.copy list"
            )
        rows: int | None = None
        for v, s in zip(job.vectors, shapes, strict=True):
            if s is None or s == shape:
                continue
            if vocab_case(key, shape, s):
                rows = min(rows or shape[0], s[0], shape[0])
                continue
            raise CheckpointError(
                f"tensor {name}: shape {shape} in ΘT but {s} in task vector {v.describe()}; "
                "the models are not the same architecture"
            )
        if job.method.needs_ir_vector:
            p_name = job.p_index.find(key) if job.p_index else None
            if p_name is None:
                entries.append(entry("copy", "not in Θ0, so no ΘT − Θ0 vector"))
                continue
            ps = job.pretrained.info(p_name).shape  # type: ignore[union-attr]
            if ps != shape:
                if not vocab_case(key, shape, ps):
                    raise CheckpointError(f"tensor {name}: shape {shape} in ΘT but {ps} in Θ0")
                rows = min(rows or shape[0], ps[0])
        reason = (
            "merged" if rows is None else f"merged rows [0, {rows}), extra vocabulary rows from ΘT"
        )
        entries.append(entry("merge", reason, rows))
    skipped = [
        (f"τ{i + 1}", k, "not in ΘT")
        for i, v in enumerate(job.vectors)
        for k in v.keys()
        if k not in ir_keys and job.ir_index.find(k) is None
    ]
    return MergePlan(entries, skipped)


def check_tau(job: MergeJob, tau: torch.Tensor, name: str, i: int) -> None:
    require_finite(
        job,
        tau,
        name,
        f"task vector τ{i + 1} ({job.vectors[i].describe()})",
        "check the checkpoints or pass --allow-nonfinite",
    )


def require_finite(job: MergeJob, t: torch.Tensor, name: str, what: str, fix: str) -> None:
    """Stop on NaN/Inf in ``t`` (one cheap pass) unless the job allows non-finite values."""
    if not job.allow_nonfinite and not all_finite(t):
        raise CheckpointError(f"tensor {name}: {what} has NaN/Inf values; {fix}")


_OVERFLOW_FIX = "lower α (or the weights), or pass --allow-nonfinite to write it anyway"


def check_merged(job: MergeJob, e: PlanEntry, fp32: torch.Tensor, cast: torch.Tensor) -> None:
    """The merged tensor is finite in fp32 and still finite once cast back to ΘT's dtype."""
    require_finite(job, fp32, e.name, f"the merged value ({job.method.name})", _OVERFLOW_FIX)
    if cast.dtype != fp32.dtype:
        dtype = str(cast.dtype).removeprefix("torch.")
        require_finite(
            job,
            cast,
            e.name,
            f"the merged value cast to ΘT's {dtype} (it overflows the {dtype} range)",
            _OVERFLOW_FIX,
        )


def merged_tensor(
    job: MergeJob,
    plan: MergePlan,
    e: PlanEntry,
    device: torch.device,
    theta_t: torch.Tensor | None = None,
    taus: list[torch.Tensor] | None = None,
    tau_t: torch.Tensor | None = None,
    params: Mapping[str, Any] | None = None,
    rows: Rows = None,
) -> torch.Tensor:
    """Θ' for one planned tensor (fp32), reading inputs unless they are given (α sweep).

    ``rows`` limits the merge to rows ``[start, stop)`` of the tensor (row blocks of an
    elementwise method); by default the merged rows are all of them, or ``[0, e.rows)``
    when ΘT has extra vocabulary rows.
    """
    if rows is None and e.rows:
        rows = (0, e.rows)
    if theta_t is None:
        theta_t = job.ir.get(e.name, rows).to(device=device, dtype=torch.float32)
        require_finite(
            job,
            theta_t,
            e.name,
            f"ΘT ({job.ir.ref})",
            "the checkpoint is broken; re-download it or pass --allow-nonfinite",
        )
    if taus is None:
        taus = []
        for i, v in enumerate(job.vectors):
            d = v.get(e.key, rows)
            d = torch.zeros_like(theta_t) if d is None else d.to(device)
            check_tau(job, d, e.name, i)
            taus.append(d)
    if tau_t is None and job.method.needs_ir_vector:
        p = job.pretrained.get(job.p_index.find(e.key), rows)  # type: ignore[union-attr]
        tau_t = theta_t - p.to(device=device, dtype=torch.float32)
    pos = TensorPosition(e.key, layer_index(e.key), plan.num_layers)
    resolved = resolve_all(params if params is not None else job.params, pos)
    if job.method.statistics:  # a data-aware method: its statistics, not the pass's settings
        from mergekit_ir.merging.statistics import STATISTICS, missing_statistics

        if job.statistics is None:
            raise missing_statistics(job.method)
        resolved.pop(STATISTICS.name, None)
        resolved["stats"] = job.statistics.for_tensor(e.key)
    out = job.method.merge(theta_t, taus, tau_t=tau_t, name=e.key, **resolved)
    if tuple(out.shape) != tuple(theta_t.shape):
        raise CheckpointError(
            f"merge method '{job.method.name}' returned shape {tuple(out.shape)} for tensor {e.name}, "
            f"expected {tuple(theta_t.shape)}"
        )
    return out


BLOCK_BYTES = 4 * 2**20
"""fp32 bytes of one row block: all inputs of a block stay in the CPU caches."""


def row_blocks(shape: tuple[int, ...], split_at: int | None = None) -> list[Rows]:
    """Row ranges of about :data:`BLOCK_BYTES` covering a tensor, cut at ``split_at``."""
    if not shape:
        return [None]
    row = math.prod(shape[1:]) * 4
    step = max(1, BLOCK_BYTES // max(row, 1))
    cuts = sorted({0, shape[0], *range(0, shape[0], step), *([split_at] if split_at else [])})
    return [(a, b) for a, b in itertools.pairwise(cuts)] or [(0, 0)]


def _merged_block(
    job: MergeJob, plan: MergePlan, e: PlanEntry, device: torch.device, rows: Rows
) -> torch.Tensor:
    fp32 = merged_tensor(job, plan, e, device, rows=rows)
    merged = fp32.to("cpu", e.dtype)
    check_merged(job, e, fp32, merged)
    return merged


@dataclass(frozen=True)
class BlockTask:
    """One row block of one planned tensor: merged, or ΘT's rows copied as they are."""

    entry: PlanEntry
    rows: Rows
    merge: bool


def block_tasks(job: MergeJob, e: PlanEntry) -> Iterator[BlockTask]:
    """The blocks of one planned tensor, in order; concatenated they are the tensor.

    Copies and elementwise methods go block by block (memory stays at a few blocks and
    their inputs stay in the CPU caches); other methods need the whole tensor at once.
    """
    if e.action == "copy":
        for rows in row_blocks(e.shape):
            yield BlockTask(e, rows, merge=False)
    elif job.method.elementwise:
        for rows in row_blocks(e.shape, e.rows):
            extra = bool(e.rows) and rows is not None and rows[0] >= e.rows  # type: ignore[operator]
            yield BlockTask(e, rows, merge=not extra)  # ΘT's extra vocabulary rows are copied
    else:
        yield BlockTask(e, None, merge=True)
        if e.rows:  # ΘT's extra vocabulary rows follow the merged ones
            yield BlockTask(e, (e.rows, e.shape[0]), merge=False)


def run_block(
    job: MergeJob, plan: MergePlan, task: BlockTask, device: torch.device
) -> torch.Tensor:
    """Θ' of one block in ΘT's dtype (reads and arithmetic only: safe in any thread)."""
    if not task.merge:
        return job.ir.get(task.entry.name, task.rows)
    return _merged_block(job, plan, task.entry, device, task.rows)


def iter_merged(
    job: MergeJob,
    plan: MergePlan,
    device: str | torch.device = "cpu",
    progress: bool = True,
    workers: int = 1,
) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, row block in ΘT's dtype) for every planned tensor, in plan order.

    The blocks of one tensor come one after the other; concatenated along the first
    dimension they are the tensor. With ``workers > 1`` that many threads read and merge
    the next blocks while earlier ones are consumed (positioned reads and torch kernels
    release the GIL, so one thread's reads overlap another's arithmetic); the order and
    the bits are the same as with one.
    """
    device = torch.device(device)
    entries = tqdm(plan.entries, desc="merging", unit="tensor", disable=not progress, leave=False)
    tasks = (task for e in entries for task in block_tasks(job, e))
    if workers <= 1:
        for task in tasks:
            yield task.entry.name, run_block(job, plan, task, device)
        return
    ahead = 2 * workers  # blocks in flight: memory stays at a few blocks
    pending: collections.deque[tuple[str, concurrent.futures.Future[torch.Tensor]]]
    pending = collections.deque()
    pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="mergeir-merge")
    try:
        for task in tasks:
            pending.append((task.entry.name, pool.submit(run_block, job, plan, task, device)))
            if len(pending) >= ahead:
                name, future = pending.popleft()
                yield name, future.result()
        while pending:
            name, future = pending.popleft()
            yield name, future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def _one_torch_thread(active: bool) -> Iterator[None]:
    """Row blocks are too small for torch's intra-op threads to pay: the merge threads are
    the parallelism, and with the writer thread they already fill the cores (one intra-op
    thread merged BERT-large in 3.2 s against 4.4–4.8 s with two; docs/performance.md)."""
    before = torch.get_num_threads()
    if active:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def default_workers() -> int:
    """Merge threads beside the writer: two overlap one's reads with the other's arithmetic
    (docs/performance.md); more only pay where more cores and memory bandwidth are."""
    return max(1, min(4, (os.cpu_count() or 1)))


def write_blocks(
    writer: ShardedWriter, blocks: Iterator[tuple[str, torch.Tensor]], background: bool = True
) -> None:
    """Write ``blocks`` in order; with ``background`` a writer thread does it, so reading and
    merging block i + 1 overlaps writing block i (file writes and torch kernels release
    the GIL). A few blocks are in flight at most; an error on either side stops both."""
    if not background:
        for name, block in blocks:
            writer.write_rows(name, block)
        return
    todo: queue.Queue[tuple[str, torch.Tensor] | None] = queue.Queue(maxsize=8)
    failed: list[BaseException] = []

    def drain() -> None:
        try:
            while (item := todo.get()) is not None:
                writer.write_rows(*item)
        except BaseException as exc:  # re-raised in the caller's thread
            failed.append(exc)
            while todo.get() is not None:  # let the producer finish or stop
                pass

    thread = threading.Thread(target=drain, name="mergeir-write", daemon=True)
    thread.start()
    try:
        for item in blocks:
            if failed:
                break
            todo.put(item)
    finally:
        todo.put(None)
        thread.join()
    if failed:
        raise failed[0]


@dataclass
class MergeReport:
    out: Path
    counts: dict[str, int]
    seconds: float
    bytes_written: int
    shards: int


def inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` (symlinks resolved) lies inside ``folder``: a link in a checkpoint to
    /etc/hostname or a home folder is not part of the model and is never copied out."""
    target, root = path.resolve(), folder.resolve()
    return target == root or root in target.parents


def copy_side_files(src: Path, dst: Path) -> None:
    """Config, tokenizer and sentence-transformers files of ΘT: everything but weights and card
    (and links that lead outside ΘT's folder, skipped with a warning)."""
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if path.is_symlink() and not inside(path, src):
            log.warning("%s: a link to %s, outside ΘT's folder; not copied", path, path.resolve())
            continue
        top_level = (
            len(rel.parts) == 1
        )  # weights of sub-modules (e.g. sentence-transformers Dense) are kept
        if (
            path.is_dir()
            or rel.parts[0].startswith(".")
            or top_level
            and (
                path.name.endswith(WEIGHT_SUFFIXES)
                or path.name
                in ("model.safetensors.index.json", "pytorch_model.bin.index.json", "README.md")
            )
        ):
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dst / rel)


def provenance(
    ir: str, pretrained: str | None, domains: Sequence[str], **extra: str
) -> dict[str, str]:
    """The model card's "made from" lines, in one shape for every way of merging (the CLI,
    the Python API, a registry triplet, a finished run): ΘT, Θ0, ΘD, then ``extra``."""
    return {"ΘT": ir, "Θ0": pretrained or "-", "ΘD": ", ".join(domains), **extra}


def model_card(
    job: MergeJob, plan: MergePlan, provenance: Mapping[str, Any], name: str | None = None
) -> str:
    """Θ''s README.md: the hub's YAML metadata, then how Θ' was made and how to load it.

    The metadata is built with ``huggingface_hub.ModelCardData`` and read back with it, so it
    parses as the hub parses cards: ``library_name`` (``sentence-transformers`` when ΘT is a
    sentence-transformers folder, with that kind's ``pipeline_tag`` and tags, else
    ``transformers``), ``tags``, ``base_model`` (the inputs that are hub ids, i.e. were read
    from the hub cache) with ``base_model_relation: merge``. For a run's Θ' (``merge
    --from-run``, ``run --save-best``: ``provenance`` names the run) a ``model-index`` holds the
    metrics the run measured for this Θ' on each dataset it was tuned for: the test split,
    Θ' alone on the first stage's candidates and fused with the first stage, each metric's
    ``args`` naming α, how α was chosen (dev judgments or label-free), the method and the
    first stage. ``name`` is the model-index's model name (the output folder's name).
    """
    import re

    import yaml
    from huggingface_hub import EvalResult, ModelCardData

    from mergekit_ir.errors import MergeIRError
    from mergekit_ir.results import (
        CANDIDATE_KEYS,
        DOMAIN,
        IR,
        MERGED_BEST,
        PRETRAINED,
        alpha_label,
        load_results,
    )

    params = json.dumps(job.params, default=str)
    c = plan.counts()
    sources = "\n".join(f"- **{k}**: `{v}`" for k, v in provenance.items())
    model_name = name or str(provenance.get("triplet") or "merged")

    # -- what ΘT is: a sentence-transformers kind, or a plain transformers folder ----------
    st_folder = job.ir.folder
    st_kind, sub_weights = None, []
    if (st_folder / "modules.json").is_file():
        try:
            st_cfg = json.loads((st_folder / "config_sentence_transformers.json").read_text())
            module_types = [
                str(m.get("type", "")) for m in json.loads((st_folder / "modules.json").read_text())
            ]
        except (OSError, ValueError, AttributeError, TypeError):
            st_cfg, module_types = {}, []
        archs = job.ir.config.get("architectures") or []
        st_kind = str(st_cfg.get("model_type") or "") if isinstance(st_cfg, dict) else ""
        if st_kind not in ("SentenceTransformer", "CrossEncoder", "SparseEncoder"):
            st_kind = (
                "SparseEncoder"
                if any(t.endswith("SpladePooling") for t in module_types)
                else "CrossEncoder"
                if any(str(a).endswith("ForSequenceClassification") for a in archs)
                else "SentenceTransformer"
            )
        sub_weights = sorted(
            str(f.relative_to(st_folder))
            for f in st_folder.rglob("*")
            if f.is_file()
            and len(f.relative_to(st_folder).parts) > 1
            and f.name.endswith(WEIGHT_SUFFIXES)
            and not f.relative_to(st_folder).parts[0].startswith(".")
        )
    st_meta = {
        "SentenceTransformer": (
            "sentence-similarity",
            ["sentence-similarity", "feature-extraction"],
            "bi-encoder",
        ),
        "CrossEncoder": ("text-ranking", ["cross-encoder", "reranker"], "cross-encoder"),
        "SparseEncoder": ("feature-extraction", ["sparse-encoder", "sparse", "splade"], "splade"),
    }
    pipeline_tag, st_tags, scorer_kind = st_meta.get(st_kind or "", (None, [], None))
    tags = ["mergekit-ir", "merge", job.method.name]
    if st_kind:
        tags += ["sentence-transformers", *st_tags]

    # -- base_model: the inputs read from the hub cache (models--org--name/snapshots/…) -----
    hub_ids: list[str] = []
    for _, folder in input_folders(job):
        m = re.search(r"models--([^/\\]+)[/\\]snapshots[/\\]", str(Path(folder).resolve()))
        if m and m.group(1).replace("--", "/") not in hub_ids:
            hub_ids.append(m.group(1).replace("--", "/"))

    # -- model-index: what the run measured for this Θ' --------------------------------------
    eval_results: list[Any] = []
    table: list[str] = []

    def run_evaluation(run: str) -> None:
        try:
            results = load_results(run)
        except MergeIRError as exc:
            log.warning("model card without model-index: %s", exc)
            return
        triplet = provenance.get("triplet")
        section = (
            results.section(str(triplet))
            if triplet
            else (results.sections[0] if len(results.sections) == 1 else None)
        )
        row = section.row(MERGED_BEST) if section is not None else None
        if section is None or row is None:
            return
        manifest = results.manifest or {}
        exp = manifest.get("experiment") or {}
        tuned_for = [d.strip() for d in str(provenance.get("tuned for", "")).split(",")]
        datasets = [d for d in tuned_for if d] or list(row.cells)
        try:  # the registry the run read names each dataset's test split
            registry = yaml.safe_load(Path(str(manifest.get("registry", ""))).read_text())
            specs = registry.get("datasets") or {}
        except (OSError, ValueError, AttributeError, yaml.YAMLError):
            specs = {}
        row0 = section.rows[0] if section.rows else None  # the first stage's row
        model_rows = (PRETRAINED, IR, *CANDIDATE_KEYS)
        first = row0 if row0 and row0.key not in model_rows and DOMAIN not in row0.key else None
        first_stage = str(exp.get("first_stage") or (first.key if first else "first stage"))
        first_label = first.label if first else first_stage
        k = exp.get("k")
        merge_params = {p: v for p, v in job.params.items() if p != "alpha" and v is not None}
        selection = results.alpha_selection.get(section.triplet)
        ablation = results.alpha_ablation.get(section.triplet)
        fusion = (results.fusion.get(section.triplet) or {}).get(MERGED_BEST) or {}
        for d in datasets:
            run_alpha = section.tuned_alpha.get(d, row.alpha_for(d))
            shown = run_alpha if isinstance(run_alpha, str) else alpha_label(run_alpha)
            if run_alpha is None or shown != alpha_label(job.params.get("alpha")):
                log.warning(
                    "model card: the run's α on %s (%s) is not this merge's; no model-index for it",
                    d,
                    shown,
                )
                continue
            if selection is not None and d in selection.choices.get(selection.primary, {}):
                choice = selection.choices[selection.primary][d]
                labels = choice.diagnostics.get("uses_labels") or (
                    selection.primary.partition(":")[0] == "dev"
                )
                tuning = "dev" if labels else "label-free"
                detail = f"α selector {selection.primary} on {selection.metric}"
            elif ablation is not None and d in ablation.values:
                tuning, detail = "dev", f"{ablation.split} split, {ablation.metric}"
            elif ablation is not None and exp.get("transfer_alpha") and ablation.values:
                tuning = "dev"
                detail = f"transferred from the dev splits of {', '.join(ablation.values)}"
            else:
                tuning, detail = "none", "not tuned (no dev split), the default α"
            spec = specs.get(d) if isinstance(specs, dict) else None
            split = spec.get("test") if isinstance(spec, dict) else None
            split = split if isinstance(split, str) and split else "test"
            args = {
                "alpha": job.params.get("alpha"),
                "alpha_tuning": tuning,
                "alpha_tuned_on": detail,
                "merge_method": job.method.name,
                **({"merge_params": merge_params} if merge_params else {}),
                "first_stage": first_stage,
                **({"k": k} if k is not None else {}),
            }
            fused_args = {
                **args,
                "fusion": {
                    "method": exp.get("fusion_method", "wsum"),
                    "norm": exp.get("fusion_norm", "min-max"),
                    **dict(fusion.get(d) or {}),
                },
            }
            top = f" top-{k}" if k is not None else ""
            # one model-index entry per dataset (the hub groups results by task and dataset):
            # Θ' alone on the candidates first, then the run's table, fused with the first stage
            groups = [
                ("", args, (row.unfused or {}).get(d) or {}),
                (
                    f" (fused with {first_label})",
                    fused_args,
                    {m: cell.mean for m, cell in row.cells.get(d, {}).items()},
                ),
            ]
            metrics = list(results.metrics) or list(row.cells.get(d, {}))
            for suffix, metric_args, values in groups:
                for metric in metrics:
                    if values.get(metric) is None:
                        continue
                    what, _, cut = metric.partition("@")
                    kind = {"p": "precision", "r": "recall"}.get(what.lower(), what.lower())
                    eval_results.append(
                        EvalResult(
                            task_type="text-ranking",
                            task_name=f"Reranking {first_label}{top}",
                            dataset_type=d,
                            dataset_name=d,
                            dataset_split=split,
                            metric_type=f"{kind}_at_{cut}" if cut else kind,
                            metric_name=metric + suffix,
                            metric_value=round(float(values[metric]), 4),
                            metric_args=metric_args,
                        )
                    )
            alone, fused = groups[0][2], groups[1][2]
            for metric in metrics:
                a, f = alone.get(metric), fused.get(metric)
                table.append(
                    f"| {d} ({split}) | {metric} | "
                    + " | ".join("-" if v is None else f"{v:.4f}" for v in (a, f))
                    + f" | {alpha_label(job.params.get('alpha'))}, {tuning}: {detail} |"
                )

    if provenance.get("run"):
        run_evaluation(str(provenance["run"]))

    data = ModelCardData(
        library_name="sentence-transformers" if st_kind else "transformers",
        pipeline_tag=pipeline_tag,
        tags=tags,
        base_model=hub_ids or None,
        model_name=model_name if eval_results else None,
        eval_results=eval_results or None,
        **({"base_model_relation": "merge"} if hub_ids else {}),
    )
    header = data.to_yaml()
    try:  # read back as the hub reads it: a model-index that does not parse is our bug
        again = ModelCardData(**yaml.safe_load(header))
    except (ValueError, TypeError, yaml.YAMLError) as exc:
        raise CheckpointError(f"the model card's metadata does not parse back ({exc})") from None
    if len(again.eval_results or []) != len(eval_results):
        raise CheckpointError("the model card's model-index does not parse back")

    evaluation = ""
    if table:
        evaluation = (
            "\n## Evaluation (from the run)\n\n"
            "Measured by `mergeir run` on the test split of each dataset α was tuned for: Θ' "
            "re-ranking the first stage alone, and fused with it (the run's table); the same "
            "numbers are in the `model-index` above.\n\n"
            "| dataset (split) | metric | Θ' alone | fused | α, how it was chosen |\n"
            "|---|---|---|---|---|\n" + "\n".join(table) + "\n"
        )
    modules = ""
    if sub_weights:
        modules = (
            f"sentence-transformers modules are ΘT's, copied as they are (not merged): "
            f"{', '.join(f'`{w}`' for w in sub_weights)}.\n\n"
        )
    if st_kind == "CrossEncoder":
        usage = """```python
from sentence_transformers import CrossEncoder
model = CrossEncoder("path/to/this/folder")
scores = model.predict([("a query", "a document")])
```"""
    elif st_kind:
        usage = f"""```python
from sentence_transformers import {st_kind}
model = {st_kind}("path/to/this/folder")
scores = model.similarity(model.encode_query(["a query"]), model.encode_document(["a document"]))
```"""
    else:
        usage = """```python
from transformers import AutoModel, AutoTokenizer
model = AutoModel.from_pretrained("path/to/this/folder")
tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")
```"""
    how = (
        f"Load it like ΘT, with sentence-transformers ({st_kind}), or re-rank with it: "
        f"`mergeir rerank path/to/this/folder --scorer {scorer_kind} --dataset …`"
        if st_kind
        else "Load it like ΘT, e.g. with plain transformers"
    )
    return f"""---
{header}
---
# Merged with mergekit-ir

Θ' = merge(ΘT, τ) with method **{job.method.name}**, parameters `{params}`.

{sources}
- **task vectors**: {"; ".join(v.describe() for v in job.vectors)}

Tensors: {c["merge"]} merged, {c["copy"]} copied from ΘT, {c["skip"]} skipped (present only in Θ0/ΘD).

{modules}Made with `mergekit-ir` (`mergeir merge`); method from Braga et al., *Investigating Task Arithmetic
for Zero-Shot Information Retrieval* (SIGIR 2025).
{evaluation}
{how}:

{usage}
"""


OUTPUT_MARKER = "mergekit_ir.json"
"""Written into every merge output: what ``--overwrite`` may replace without asking."""


def input_folders(job: MergeJob) -> list[tuple[str, Path]]:
    """(role, folder) of every checkpoint, adapter and saved task vector a merge reads."""
    out = [("ΘT", job.ir.folder)]
    if job.pretrained is not None:
        out.append(("Θ0", job.pretrained.folder))
    for i, v in enumerate(job.vectors):
        for _, term in v.terms:
            for attr in ("domain", "pretrained"):
                src = getattr(term, attr, None)
                if isinstance(src, TensorSource):
                    out.append((f"τ{i + 1} ({attr})", src.folder))
            for attr in ("folder", "path"):
                folder = getattr(term, attr, None)
                if isinstance(folder, Path):
                    out.append((f"τ{i + 1}", folder))
    return out


#: What a merge writes, for the output-folder policy (:mod:`mergekit_ir.storage.output_folder`).
MERGE_OUTPUT = OutputKind(
    what="Θ'", marker=OUTPUT_MARKER, earlier="merge output", error=CheckpointError
)


def check_output_folder(
    out: Path, inputs: list[tuple[str, Path]], overwrite: bool, needed_bytes: int = 0
) -> None:
    """The output-folder policy for Θ' (before any work): never an input, inside or above one;
    ``--overwrite`` replaces only an empty folder or an earlier merge output; room for it."""
    check_output(out, MERGE_OUTPUT, inputs=inputs, overwrite=overwrite, needed_bytes=needed_bytes)


def output_bytes(plan: MergePlan) -> int:
    """The tensor bytes Θ' will take on disk (what the free-space check compares with)."""
    return sum(math.prod(e.shape) * e.dtype.itemsize for e in plan.entries)


def merge_to_folder(
    job: MergeJob,
    out: str | Path,
    *,
    shard_size: int = 5 * 10**9,
    overwrite: bool = False,
    device: str = "cpu",
    progress: bool = True,
    provenance: Mapping[str, Any] | None = None,
    plan: MergePlan | None = None,
    overlap: bool = True,
    workers: int | None = None,
) -> MergeReport:
    """Write Θ' as a Hugging Face folder (config + tokenizer of ΘT, sharded safetensors, card).

    ``overlap``: write in a background thread while ``workers`` threads (default
    :func:`default_workers`) read and merge the next blocks. The shards are on disk
    (fsync) before the folder is renamed into place.
    """
    out = Path(out)
    plan = plan or build_plan(job)
    if job.method.statistics and job.statistics is None:  # before any work
        from mergekit_ir.merging.statistics import missing_statistics

        raise missing_statistics(job.method)
    check_output_folder(out, input_folders(job), overwrite, output_bytes(plan))
    keep_freed_buffers()
    start = time.perf_counter()
    specs = [TensorSpec(e.name, e.shape, e.dtype) for e in plan.entries]
    meta = {
        "mergekit_ir_method": job.method.name,
        "mergekit_ir_params": json.dumps(job.params, default=str),
    }
    try:
        with atomic.directory(out, overwrite=overwrite) as tmp:
            copy_side_files(job.ir.folder, tmp)
            writer = ShardedWriter(tmp, specs, shard_size, meta, durable=True)
            with writer, _one_torch_thread(overlap and job.method.elementwise):
                # whole-tensor methods stay on one thread: memory stays at one tensor
                n = (workers or default_workers()) if overlap and job.method.elementwise else 1
                write_blocks(writer, iter_merged(job, plan, device, progress, n), overlap)
            card = model_card(job, plan, provenance or {"ΘT": job.ir.ref}, name=out.name or None)
            (tmp / "README.md").write_text(card)
            (tmp / OUTPUT_MARKER).write_text(
                json.dumps(
                    {
                        "method": job.method.name,
                        "params": job.params,
                        "plan": plan.counts(),
                        "sources": dict(provenance or {}),
                        "task_vectors": [v.describe() for v in job.vectors],
                    },
                    indent=2,
                    default=str,
                )
            )
    except OSError as exc:
        raise CheckpointError(atomic.os_error_message(exc, out)) from None
    counts = plan.counts()
    log.info("merged %(merge)d tensors, copied %(copy)d from ΘT, skipped %(skip)d", counts)
    return MergeReport(
        out, counts, time.perf_counter() - start, writer.total_bytes, len(writer.files)
    )
