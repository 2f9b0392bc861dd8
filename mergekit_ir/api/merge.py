"""The merge as a Python call: what ``mergeir merge`` runs, for scripts and notebooks.

:func:`prepare_merge` turns references (folders or hub ids) into a :class:`MergeJob` with
every parameter validated against the method's declarations; :func:`merge` then streams
Θ' to a folder. ``mergekit_ir.api.triplet_merge.merge_triplet`` does the same from a
registry triplet.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergekit_ir.errors import ConfigError
from mergekit_ir.merging.alignment import AlignmentRules, MergePlan
from mergekit_ir.merging.checkpoint import TensorSource, open_checkpoint
from mergekit_ir.merging.engine import MergeJob, MergeReport, build_plan, merge_to_folder
from mergekit_ir.merging.engine import provenance as made_of
from mergekit_ir.merging.method import check_weights
from mergekit_ir.merging.task_vector import TaskVector
from mergekit_ir.references.checkpoints import DomainRef, resolve_checkpoint
from mergekit_ir.storage.cache import resolve_cache_root


@dataclass
class PreparedMerge:
    """A validated merge, ready to plan or write."""

    job: MergeJob
    plan: MergePlan
    provenance: dict[str, str]


def prepare_merge(
    ir: str | Path | TensorSource,
    domains: Sequence[str | DomainRef],
    *,
    pretrained: str | Path | TensorSource | None = None,
    method: str = "task_arithmetic",
    params: Mapping[str, Any] | None = None,
    alignment: AlignmentRules | None = None,
    allow_nonfinite: bool = False,
    base_dir: Path | None = None,
    cache_root: Path | None = None,
    provenance: Mapping[str, str] | None = None,
    where: str = "--param",
) -> PreparedMerge:
    """Resolve inputs, validate ``params`` (α included) against the method, and plan the merge.

    ``cache_root`` is where quickstart checkpoints are built (default: the cache folder)."""
    cache_root = resolve_cache_root(cache_root)
    from mergekit_ir.params import check_params
    from mergekit_ir.plugin_host import catalog

    mm = catalog().merge_method(method, "--method" if where == "--param" else f"{where}.method")
    checked = check_params(mm.params, dict(params or {}), where, f"merge method '{method}'")

    def source(x: str | Path | TensorSource) -> TensorSource:
        if isinstance(x, TensorSource):
            return x
        return open_checkpoint(str(resolve_checkpoint(str(x), None, base_dir, cache_root)))

    ir_src = source(ir)
    pre_src = source(pretrained) if pretrained is not None else None
    vectors = []
    for d in domains:
        d = d if isinstance(d, DomainRef) else DomainRef.parse(str(d))
        folder = resolve_checkpoint(
            d.ref, None, base_dir, cache_root
        )  # adapters may be hub ids too
        vectors.append(TaskVector.from_reference(d.kind, folder, pre_src))
    if not vectors:
        raise ConfigError("give at least one domain input (a ΘD checkpoint, lora: or task_vector:)")
    check_weights(checked.get("weights"), len(vectors), f"{where} weights")
    job = MergeJob(
        ir_src,
        vectors,
        mm,
        checked,
        pretrained=pre_src,
        rules=alignment or AlignmentRules(),
        allow_nonfinite=allow_nonfinite,
    )
    made_from = provenance or made_of(
        str(ir_src.ref),
        str(pre_src.ref) if pre_src is not None else None,
        [v.describe() for v in vectors],
    )
    return PreparedMerge(job, build_plan(job), dict(made_from))


def merge(
    ir: str | Path | TensorSource,
    domains: Sequence[str | DomainRef],
    out: str | Path,
    *,
    pretrained: str | Path | TensorSource | None = None,
    method: str = "task_arithmetic",
    params: Mapping[str, Any] | None = None,
    alignment: AlignmentRules | None = None,
    allow_nonfinite: bool = False,
    shard_size: int = 5 * 10**9,
    overwrite: bool = False,
    device: str = "cpu",
    progress: bool = True,
    cache_dir: str | Path | None = None,
) -> MergeReport:
    """Write Θ' = merge(ΘT, τ…; params) as a Hugging Face folder; see ``docs/merging.md``.

    >>> merge("ir/", ["bio/"], "merged/", pretrained="base/", params={"alpha": 0.3})  # doctest: +SKIP
    """
    prepared = prepare_merge(
        ir,
        domains,
        pretrained=pretrained,
        method=method,
        params=params,
        alignment=alignment,
        allow_nonfinite=allow_nonfinite,
        cache_root=resolve_cache_root(cache_dir),
    )
    return write_merge(
        prepared, out, shard_size=shard_size, overwrite=overwrite, device=device, progress=progress
    )


def write_merge(
    prepared: PreparedMerge,
    out: str | Path,
    *,
    shard_size: int = 5 * 10**9,
    overwrite: bool = False,
    device: str = "cpu",
    progress: bool = True,
) -> MergeReport:
    """Stream a prepared merge to ``out`` (atomically)."""
    from mergekit_ir.scoring.scorer import resolve_device

    return merge_to_folder(
        prepared.job,
        out,
        shard_size=shard_size,
        overwrite=overwrite,
        device=str(resolve_device(device)),
        progress=progress,
        provenance=prepared.provenance,
        plan=prepared.plan,
    )
