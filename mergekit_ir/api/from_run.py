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
from mergekit_ir.results import MERGED_BEST, Results, read_results_json


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
    return Results.from_json(raw)


def selections(
    run_dir: str | Path, triplet: str | None = None, dataset: str | None = None
) -> list[RunSelection]:
    """Every distinct tuned Θ' of the run (one per triplet, or per dataset where α differs),
    narrowed by ``triplet`` and ``dataset``."""
    run_dir = Path(run_dir)
    results = read_results(run_dir)
    manifest = results.manifest or {}
    exp = manifest.get("experiment") or {}
    cache = (manifest.get("cache") or {}).get("dir")
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
                    cache_dir=Path(cache) if cache else None,
                    triplet=s.triplet,
                    datasets=tuple(names),
                    method=str(exp.get("method", "task_arithmetic")),
                    params={**dict(exp.get("merge_params") or {}), "alpha": json.loads(alpha_json)},
                )
            )
    if not out:
        raise ConfigError(f"--from-run {run_dir}: the run has no tuned Θ' row to write")
    return out


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
    return prepare_triplet_merge(
        load_registry(selection.registry),
        selection.triplet,
        method=selection.method,
        params=selection.params,
        allow_nonfinite=allow_nonfinite,
        cache_root=selection.cache_dir,
        provenance=selection.provenance(),
    )
