"""Where a registry's inputs come from: the one answer for the dry run and the loader.

A dataset split is a local BEIR folder, a ``quickstart:`` folder, or an ``ir_datasets`` id;
:func:`locate_dataset` answers without downloading anything (the dry run prints its answer)
and :func:`load_dataset` acts on the very same answer. Checkpoint references are resolved by
:mod:`mergekit_ir.references.checkpoints`; :func:`resolve_ref` applies it to a registry entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergekit_ir.adaptation.corpus import Corpus, NamedCorpora
from mergekit_ir.errors import ConfigError
from mergekit_ir.evaluation.datasets import Dataset, load_beir_folder, load_ir_datasets
from mergekit_ir.experiments.registry import (
    CheckpointRef,
    DatasetSpec,
    Experiment,
    Registry,
    Triplet,
)
from mergekit_ir.references import quickstart
from mergekit_ir.references.checkpoints import Location, locate_checkpoint, resolve_checkpoint


def resolve_ref(ref: CheckpointRef, base_dir: Path | None, cache_root: Path | None) -> Path:
    """:func:`resolve_checkpoint` for a registry reference."""
    return resolve_checkpoint(ref.ref, ref.revision, base_dir, cache_root)


# -- datasets ---------------------------------------------------------------------------------
def ir_datasets_id(spec: DatasetSpec, split: str) -> str:
    """``beir/scifact`` + ``train[:20%]`` -> ``beir/scifact/train[:20%]``."""
    name, _, rest = split.partition("[")
    return (f"{spec.ir_datasets}/{name}" if name else str(spec.ir_datasets)) + (
        f"[{rest}" if rest else ""
    )


def _beir_folder(spec: DatasetSpec, base_dir: Path) -> Path | None:
    if not spec.beir or spec.beir.startswith(quickstart.SCHEME):
        return None
    folder = Path(spec.beir).expanduser()
    if not folder.is_absolute():
        folder = base_dir / folder
    return folder if folder.is_dir() else None


def beir_folder_gaps(folder: Path, split: str) -> list[str]:
    """The files a split of a BEIR folder needs that are absent or empty (cheap: no parsing)."""
    from mergekit_ir.evaluation.datasets import parse_split

    split_name = parse_split(split or "test")[0]
    needed = ["corpus.jsonl", "queries.jsonl", f"qrels/{split_name}.tsv"]
    gaps = []
    for rel in needed:
        path = folder / rel
        if not path.is_file():
            hint = ""
            if rel.startswith("qrels/") and (folder / "qrels").is_dir():
                have = sorted(p.stem for p in (folder / "qrels").glob("*.tsv"))
                hint = f" (splits there: {', '.join(have) or 'none'})"
            gaps.append(f"{rel}{hint}")
        elif path.stat().st_size == 0:
            gaps.append(f"{rel} (empty)")
    return gaps


def locate_dataset(spec: DatasetSpec, split: str, base_dir: Path) -> Location:
    """Where a split will be read from; flags ``ir_datasets`` ids that do not exist."""
    if spec.beir and spec.beir.startswith(quickstart.SCHEME):
        return Location(
            "quickstart", detail=f"{split or 'all'} from generated offline (quickstart)"
        )
    folder = _beir_folder(spec, base_dir)
    if folder is not None:
        missing = beir_folder_gaps(folder, split)
        if missing:
            return Location(
                "problem",
                folder,
                problem=f"MISSING in BEIR folder {spec.beir}: {', '.join(missing)}",
            )
        return Location("local", folder, f"{split or 'all'} from BEIR folder {spec.beir}")
    if not spec.ir_datasets:
        hint = f" ({spec.description})" if spec.description else ""
        return Location(
            "problem",
            problem=f"MISSING: BEIR folder {spec.beir} not found and no ir_datasets id{hint}",
        )
    import ir_datasets

    ds_id = ir_datasets_id(spec, split)
    base = ds_id.split("[")[0]
    if base not in ir_datasets.registry:
        return Location(
            "problem", problem=f"UNKNOWN ir_datasets id {base!r} (see https://ir-datasets.com)"
        )
    local = f" (BEIR folder {spec.beir} not found)" if spec.beir else ""
    return Location("ir_datasets", detail=f"ir_datasets {ds_id}{local}, downloads on first use")


def load_dataset(spec: DatasetSpec, split: str, base_dir: Path, cache_root: Path) -> Dataset:
    """A dataset split from where :func:`locate_dataset` says it is."""
    loc = locate_dataset(spec, split, base_dir)
    if loc.kind == "quickstart":
        folder = quickstart.resolve(str(spec.beir), cache_root)
        return load_beir_folder(folder, split, name=spec.name, language=spec.language)
    if loc.kind == "local" or (loc.kind == "problem" and loc.path is not None):
        # an incomplete local folder: the loader names the exact file and line
        return load_beir_folder(loc.path, split, name=spec.name, language=spec.language)
    if loc.kind == "problem" and not spec.ir_datasets:
        raise ConfigError(
            f"datasets.{spec.name}.beir: folder {spec.beir} not found "
            "(and no ir_datasets id to fall back on)"
        )
    return load_ir_datasets(ir_datasets_id(spec, split), name=spec.name, language=spec.language)


def registry_corpora(reg: Registry, cache_root: Path) -> NamedCorpora:
    """The registry's datasets as corpora ``adapt`` may read by name (each dataset's test-split
    corpus, all documents in id order)."""

    def load(name: str) -> Corpus:
        spec = reg.dataset(name)
        ds = load_dataset(spec, spec.test, reg.base_dir, cache_root)
        return Corpus(name, [ds.corpus[d].full_text for d in sorted(ds.corpus)], ds.fingerprint())

    return NamedCorpora(tuple(reg.datasets), load, reg.base_dir)


@dataclass(frozen=True)
class DomainInput:
    """What a merge needs of one ΘD reference: its folder, the task-vector kind it is read as
    (``checkpoint``, ``lora``, ``task_vector``) and the checkpoint τ is taken against
    (``pretrained``, or ``ir`` for an ``adapt:`` ΘD built from ΘT)."""

    folder: Path
    kind: str
    against: str = "pretrained"


@dataclass(frozen=True)
class DomainBuilder:
    """How to build an ``adapt:`` ΘD that is not in the cache yet (``mergeir run`` builds it;
    ``mergeir merge`` does not, and says so)."""

    device: Any
    echo: Callable[[str], None] = print
    progress: bool = True


def domain_input(
    reg: Registry,
    triplet: Triplet,
    ref: CheckpointRef,
    cache_root: Path,
    build: DomainBuilder | None = None,
) -> DomainInput:
    """The one answer to "turn a ΘD reference into what the merge needs", for the runner and
    ``mergeir merge``: a given ΘD resolves like any checkpoint; an ``adapt:`` ΘD is found in
    the cache, or built there when ``build`` is given."""
    if ref.kind != "adapt":
        return DomainInput(resolve_ref(ref, reg.base_dir, cache_root), ref.kind)
    from mergekit_ir.adaptation.domain import build_domain, plan_domain

    assert ref.adapt is not None
    where = f"triplets.{triplet.name}.domain"
    against = "pretrained" if ref.adapt.base == "pretrained" else "ir"
    base_ref = triplet.pretrained if against == "pretrained" else triplet.ir
    assert base_ref is not None  # the registry checks that an adapt base exists
    base = resolve_ref(base_ref, reg.base_dir, cache_root)
    kind = "lora" if ref.adapt.lora is not None else "checkpoint"
    corpora = registry_corpora(reg, cache_root)
    if build is None:
        plan = plan_domain(ref.adapt, base, corpora, cache_root)
        if not plan.cached:
            raise ConfigError(
                f"{where}: {ref.describe()} is not built yet; `mergeir run` builds it"
            )
        return DomainInput(plan.folder, kind, against)
    folder = build_domain(
        ref.adapt, base, corpora, cache_root, build.device, build.echo, build.progress
    )
    return DomainInput(folder, kind, against)


def local_inputs(reg: Registry, experiment: Experiment) -> list[tuple[str, Path]]:
    """The local folders an experiment reads (checkpoints, BEIR folders), named by their YAML
    path: what the output-folder policy keeps ``--out`` away from. Nothing is downloaded."""
    found: list[tuple[str, Path]] = []
    for tname in experiment.triplets:
        t = reg.triplet(tname)
        refs = [("ir", t.ir), ("pretrained", t.pretrained), *(("domain", d) for d in t.domains)]
        for role, ref in refs:
            if ref is None or ref.kind == "adapt":
                continue
            loc = locate_checkpoint(ref.ref, ref.revision, reg.base_dir)
            if loc.kind == "local" and loc.path is not None:
                found.append((f"triplets.{tname}.{role}", loc.path))
    for dname in experiment.datasets:
        folder = _beir_folder(reg.dataset(dname), reg.base_dir)
        if folder is not None:
            found.append((f"datasets.{dname}", folder))
    return found
