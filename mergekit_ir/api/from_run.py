"""The Θ' a finished run selected: from its ``results.json`` to a merge, no copying by hand.

A run records its experiment (method, fixed merge parameters), registry, cache and the
exact α it tuned per triplet and dataset; this module turns that back into the merge
``mergeir merge`` would do with the same α, so the written model is the one the run scored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mergekit_ir.errors import ConfigError, short_repr
from mergekit_ir.results import (
    MERGED_BEST,
    Results,
    load_results,
    point_params,
    read_results_json,
)


@dataclass(frozen=True)
class RunSelection:
    """One triplet's tuned merge, as a run chose it."""

    run_dir: Path
    experiment: str
    registry: Path
    cache_dir: Path | None
    triplet: str
    datasets: tuple[str, ...]  # the datasets this α was tuned for
    method: str
    params: dict[str, Any] = field(default_factory=dict)  # fixed parameters and the tuned α
    #: what the run recorded of each input: "triplet.role" -> {"fingerprint": …, …}
    checkpoints: dict[str, Any] = field(default_factory=dict)

    @property
    def alpha(self) -> Any:
        return self.params.get("alpha")

    def provenance(self) -> dict[str, str]:
        """What the model card records about where this Θ' came from."""
        return {
            "run": str(self.run_dir.resolve()),
            "experiment": self.experiment,
            "tuned for": ", ".join(self.datasets),
            "tuned α": json.dumps(self.alpha),
        }


def read_results(run_dir: Path) -> Results:
    raw = read_results_json(run_dir)
    if not isinstance(raw, dict) or not isinstance(raw.get("manifest"), dict):
        raise ConfigError(
            f"{run_dir / 'results.json'}: not a run's results (no manifest); rerun the experiment"
        )
    return load_results(run_dir)


def selections(
    run_dir: str | Path, triplet: str | None = None, dataset: str | None = None
) -> list[RunSelection]:
    """Every distinct tuned Θ' of the run (one per triplet, or per dataset where α differs),
    narrowed by ``triplet`` and ``dataset``."""
    run_dir = Path(run_dir)
    results = read_results(run_dir)
    manifest = results.manifest or {}
    exp = manifest.get("experiment") or {}
    cache = _recorded_cache((manifest.get("cache") or {}).get("dir"))
    recipe = exp.get("mergekit_recipe") if isinstance(exp, dict) else None
    if isinstance(recipe, dict):  # merge: {mergekit: recipe.yml}: Θ' is the recipe's merge
        raise ConfigError(
            f"--from-run {run_dir}: this run's Θ' is mergekit recipe {recipe.get('path')}'s "
            "merge, with no α tuned; write it with `mergeir merge --mergekit-config "
            f"{recipe.get('path')} --out DIR`"
        )
    sections = results.sections
    if triplet is not None:
        sections = [s for s in sections if s.triplet == triplet]
        if not sections:
            known = ", ".join(s.triplet for s in results.sections)
            raise ConfigError(f"--triplet {short_repr(triplet)}: not in this run (it has: {known})")
    out: list[RunSelection] = []
    for s in sections:
        chosen = dict(s.tuned_alpha)
        if not chosen:  # a run from before tuned_alpha was recorded: the row's labels
            row = s.row(MERGED_BEST)
            if row is None or not isinstance(row.alpha, dict):
                continue
            chosen = {d: yaml.safe_load(a) for d, a in row.alpha.items()}
        if dataset is not None:
            if dataset not in chosen:
                raise ConfigError(
                    f"--dataset {short_repr(dataset)}: not in this run (it has: {', '.join(chosen)})"
                )
            chosen = {dataset: chosen[dataset]}
        by_alpha: dict[str, list[str]] = {}
        for d, a in chosen.items():
            by_alpha.setdefault(json.dumps(a, sort_keys=True), []).append(d)
        for alpha_json, names in by_alpha.items():
            out.append(
                RunSelection(
                    run_dir=run_dir,
                    experiment=str(results.experiment),
                    registry=Path(str(manifest.get("registry", ""))),
                    cache_dir=cache,
                    triplet=s.triplet,
                    datasets=tuple(names),
                    method=str(exp.get("method", "task_arithmetic")),
                    params={
                        **dict(exp.get("merge_params") or {}),
                        **point_params(json.loads(alpha_json)),  # α, or α and swept parameters
                    },
                    checkpoints={
                        k: v
                        for k, v in dict(manifest.get("checkpoints") or {}).items()
                        if k.startswith(f"{s.triplet}.") and isinstance(v, dict)
                    },
                )
            )
    if not out:
        raise ConfigError(f"--from-run {run_dir}: the run has no tuned Θ' row to write")
    return out


def _recorded_cache(recorded: Any) -> Path | None:
    """The run's cache folder, only where it still is one (holds ``runs/``): a results.json
    is a user's file, and a path in it must never make us create folders elsewhere."""
    if not isinstance(recorded, str) or not recorded:
        return None
    path = Path(recorded)
    return path if (path / "runs").is_dir() else None


def check_unchanged(selection: RunSelection, registry: Any, cache_root: Path) -> None:
    """The checkpoints the registry names now are the ones the run scored (same content
    fingerprints as its manifest); otherwise the written Θ' would be one the run never saw."""
    from mergekit_ir.experiments.sources import resolve_ref
    from mergekit_ir.merging.checkpoint import open_checkpoint

    t = registry.triplet(selection.triplet)
    roles = [("ir", t.ir), ("pretrained", t.pretrained)]
    roles += [(f"domain{i + 1}", d) for i, d in enumerate(t.domains)]
    for role, ref in roles:
        recorded = selection.checkpoints.get(f"{selection.triplet}.{role}", {})
        if ref is None or not recorded.get("fingerprint") or ref.kind != "checkpoint":
            continue
        folder = resolve_ref(ref, registry.base_dir, cache_root)
        now = open_checkpoint(str(folder)).fingerprint(cache_root / "fingerprints")
        if now != recorded["fingerprint"]:
            raise ConfigError(
                f"--from-run {selection.run_dir}: triplets.{selection.triplet}.{role} "
                f"({ref.describe()}) is not the checkpoint the run scored (its content changed "
                "since); rerun the experiment, or merge it with `mergeir merge TRIPLET --alpha …`"
            )


def one_selection(
    run_dir: str | Path, triplet: str | None = None, dataset: str | None = None
) -> RunSelection:
    """The single Θ' ``mergeir merge --from-run`` writes; ambiguity is a one-line error."""
    found = selections(run_dir, triplet, dataset)
    if len({s.triplet for s in found}) > 1:
        names = ", ".join(dict.fromkeys(s.triplet for s in found))
        raise ConfigError(
            f"--from-run: the run has several triplets ({names}); pick one with --triplet"
        )
    if len(found) > 1:
        options = "; ".join(f"{', '.join(s.datasets)}: α={s.alpha}" for s in found)
        raise ConfigError(
            f"--from-run: α was tuned per dataset ({options}); pick one with --dataset"
        )
    return found[0]


def prepare_selection(selection: RunSelection, allow_nonfinite: bool = False):
    """The planned merge of a run's choice, from the registry and cache the run used."""
    from mergekit_ir.api.triplet_merge import prepare_triplet_merge
    from mergekit_ir.experiments.registry import load_registry

    if not selection.registry.is_file():
        raise ConfigError(
            f"--from-run {selection.run_dir}: the run's registry {selection.registry} is gone; "
            "restore it or merge with `mergeir merge TRIPLET --alpha …`"
        )
    from mergekit_ir.storage.cache import resolve_cache_root

    registry = load_registry(selection.registry)
    check_unchanged(selection, registry, resolve_cache_root(selection.cache_dir))
    from mergekit_ir.plugin_host import catalog

    # a data-aware method (regmean) merged from the corpus of the dataset α was tuned for,
    # as the run did (its statistics are in the run's cache)
    data_aware = bool(catalog().merge_method(selection.method).statistics)
    return prepare_triplet_merge(
        registry,
        selection.triplet,
        method=selection.method,
        params=selection.params,
        allow_nonfinite=allow_nonfinite,
        cache_root=selection.cache_dir,
        provenance=selection.provenance(),
        corpus=selection.datasets[0] if data_aware else None,
    )
