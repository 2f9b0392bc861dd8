"""Merging a registry triplet: its three checkpoints, its alignment rules, its provenance."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mergekit_ir.experiments.registry import Registry, load_registry
from mergekit_ir.experiments.sources import resolve_ref
from mergekit_ir.merging.api import DomainRef, PreparedMerge, prepare_merge, write_merge
from mergekit_ir.merging.engine import MergeReport


def prepare_triplet_merge(
    registry: Registry,
    triplet: str,
    *,
    method: str = "task_arithmetic",
    params: Mapping[str, Any] | None = None,
    allow_nonfinite: bool = False,
    cache_root: Path | None = None,
    where: str = "--param",
    provenance: Mapping[str, str] | None = None,
) -> PreparedMerge:
    """A validated, planned merge of one registry triplet (nothing written yet);
    ``provenance`` adds lines to the model card (e.g. the run that chose α)."""
    t = registry.triplet(triplet)
    base = registry.base_dir
    domains = [_domain(registry, t, d, cache_root) for d in t.domains]
    return prepare_merge(
        resolve_ref(t.ir, base, cache_root),
        domains,
        pretrained=resolve_ref(t.pretrained, base, cache_root) if t.pretrained else None,
        method=method,
        params=params,
        alignment=t.alignment,
        allow_nonfinite=allow_nonfinite,
        provenance={
            "triplet": triplet,
            "ΘT": t.ir.describe(),
            "Θ0": t.pretrained.describe() if t.pretrained else "-",
            "ΘD": ", ".join(d.describe() for d in t.domains),
            **dict(provenance or {}),
        },
        where=where,
    )


def merge_triplet(
    triplet: str,
    out: str | Path,
    *,
    registry: Registry | str | Path | None = None,
    method: str = "task_arithmetic",
    params: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    device: str = "cpu",
    progress: bool = True,
    shard_size: int = 5 * 10**9,
) -> MergeReport:
    """Write Θ' for a registry triplet; ``registry`` defaults to the bundled ``registry.yaml``.

    >>> merge_triplet("quickstart-tiny", "merged/", params={"alpha": 0.5})  # doctest: +SKIP
    """
    from mergekit_ir.experiments.registry import default_registry_path

    if not isinstance(registry, Registry):
        registry = load_registry(registry or default_registry_path())
    prepared = prepare_triplet_merge(registry, triplet, method=method, params=params)
    return write_merge(
        prepared, out, shard_size=shard_size, overwrite=overwrite, device=device, progress=progress
    )


def _domain(registry: Registry, t: Any, ref: Any, cache_root: Path | None) -> DomainRef:
    """A given ΘD, or an ``adapt:`` ΘD already built by ``mergeir run`` (found in the cache)."""
    if ref.kind != "adapt":
        return DomainRef(str(resolve_ref(ref, registry.base_dir, cache_root)), ref.kind)
    from mergekit_ir.adaptation.domain import plan_domain
    from mergekit_ir.errors import ConfigError
    from mergekit_ir.storage.cache import default_cache_dir

    if ref.adapt.base == "ir":
        raise ConfigError(
            f"triplets.{t.name}.domain: an adapt ΘD built from ΘT (base: ir) merges only in `mergeir run`"
        )
    root = cache_root or default_cache_dir()
    base = resolve_ref(t.pretrained, registry.base_dir, root)
    plan = plan_domain(ref.adapt, base, registry, root)
    if not plan.cached:
        raise ConfigError(
            f"triplets.{t.name}.domain: {ref.describe()} is not built yet; `mergeir run` builds it"
        )
    return DomainRef(str(plan.folder), "lora" if ref.adapt.lora is not None else "checkpoint")
