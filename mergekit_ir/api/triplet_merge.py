"""Merging a registry triplet: its three checkpoints, its alignment rules, its provenance."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mergekit_ir.api.merge import CorpusArg, PreparedMerge, prepare_merge, write_merge
from mergekit_ir.errors import ConfigError
from mergekit_ir.experiments.registry import Registry, load_registry
from mergekit_ir.experiments.sources import domain_input, registry_corpora, resolve_ref
from mergekit_ir.merging.engine import MergeReport
from mergekit_ir.merging.engine import provenance as made_of
from mergekit_ir.references.checkpoints import DomainRef
from mergekit_ir.storage.cache import resolve_cache_root


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
    corpus: CorpusArg | None = None,
) -> PreparedMerge:
    """A validated, planned merge of one registry triplet (nothing written yet);
    ``provenance`` adds lines to the model card (e.g. the run that chose α); ``corpus`` is a
    data-aware method's text source (a registry dataset name, a file or folder, or texts)."""
    cache_root = resolve_cache_root(cache_root)
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
            **made_of(
                t.ir.describe(),
                t.pretrained.describe() if t.pretrained else None,
                [d.describe() for d in t.domains],
                **dict(provenance or {}),
            ),
        },
        where=where,
        corpus=corpus,
        corpora=registry_corpora(registry, cache_root) if corpus is not None else None,
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
    cache_dir: str | Path | None = None,
    corpus: CorpusArg | None = None,
) -> MergeReport:
    """Write Θ' for a registry triplet; ``registry`` defaults to the bundled ``registry.yaml``;
    ``corpus``: a data-aware method's text source (e.g. one of the registry's datasets).

    >>> merge_triplet("quickstart-tiny", "merged/", params={"alpha": 0.5})  # doctest: +SKIP
    """
    from mergekit_ir.experiments.registry import default_registry_path

    if not isinstance(registry, Registry):
        registry = load_registry(registry or default_registry_path())
    prepared = prepare_triplet_merge(
        registry,
        triplet,
        method=method,
        params=params,
        cache_root=resolve_cache_root(cache_dir),
        corpus=corpus,
    )
    return write_merge(
        prepared, out, shard_size=shard_size, overwrite=overwrite, device=device, progress=progress
    )


def _domain(registry: Registry, t: Any, ref: Any, cache_root: Path | None) -> DomainRef:
    """A given ΘD, or an ``adapt:`` ΘD already built by ``mergeir run`` (found in the cache)."""
    if ref.kind == "adapt" and ref.adapt.base == "ir":
        raise ConfigError(
            f"triplets.{t.name}.domain: an adapt ΘD built from ΘT (base: ir) merges only in `mergeir run`"
        )
    found = domain_input(registry, t, ref, resolve_cache_root(cache_root))
    return DomainRef(str(found.folder), found.kind)
