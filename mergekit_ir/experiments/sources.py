"""Where every input comes from: the one answer for the dry run and the loader.

A checkpoint reference is a ``quickstart:`` item, a local folder (relative paths are read
beside the registry first), or a Hugging Face hub id; a dataset split is a local BEIR
folder, a ``quickstart:`` folder, or an ``ir_datasets`` id. :func:`locate_checkpoint` and
:func:`locate_dataset` answer without downloading or building anything (the dry run prints
their answers); :func:`resolve_checkpoint` and :func:`load_dataset` then act on the very same
answer, so the two can never disagree about a path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mergekit_ir.errors import CheckpointError, ConfigError
from mergekit_ir.evaluation.datasets import Dataset, load_beir_folder, load_ir_datasets
from mergekit_ir.experiments import quickstart
from mergekit_ir.experiments.registry import CheckpointRef, DatasetSpec

HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.bin", "*.py", "*/*.json"]


@dataclass(frozen=True)
class Location:
    """Where an input will be read from.

    ``kind`` is one of ``quickstart``, ``local``, ``hub-cached``, ``hub-download``,
    ``ir_datasets`` or ``problem``; ``path`` is the local folder when there is one and
    ``problem`` the one-line reason when the input cannot be read.
    """

    kind: str
    path: Path | None = None
    detail: str = ""
    problem: str = ""
    error: str = ""  # what the loader raises for a problem (the dry run prints ``problem``)

    @property
    def ok(self) -> bool:
        return self.kind != "problem"

    @property
    def downloads(self) -> bool:
        return self.kind == "hub-download" or (
            self.kind == "ir_datasets" and "downloads" in self.detail
        )

    def describe(self) -> str:
        """The dry run's words for it."""
        return self.problem if not self.ok else self.detail


def is_path_ref(ref: str) -> bool:
    """A reference that can only be a local path (``./x``, ``/x``, ``~/x``, ``a/b/c``), never a hub id."""
    return ref.startswith((".", "/", "~")) or ref.count("/") > 1


def _hub_cached(repo_id: str, revision: str | None) -> bool:
    """True when the hub cache holds the repo (HFValidationError for a malformed id)."""
    from huggingface_hub import try_to_load_from_cache

    for filename in ("config.json", "modules.json", "adapter_config.json"):
        found = try_to_load_from_cache(repo_id, filename, revision=revision)
        if isinstance(found, str):
            return True
    return False


def locate_checkpoint(
    ref: str, revision: str | None = None, base_dir: Path | None = None
) -> Location:
    """Where a checkpoint reference points, without downloading or building it."""
    if ref.startswith(quickstart.SCHEME):
        return Location("quickstart", detail="generated offline (quickstart)")
    path = Path(ref).expanduser()
    beside = base_dir / path if base_dir is not None and not path.is_absolute() else path
    for candidate in dict.fromkeys((beside, path)):
        if candidate.is_dir():
            return Location("local", candidate, f"local folder {candidate}")
        if candidate.exists():
            return Location(
                "problem",
                problem=f"MISSING: {candidate} is a file; give the folder that holds it",
                error=f"{candidate}: a checkpoint is a folder, not a file",
            )
    if is_path_ref(ref):  # paths are local, "org/name" ids go to the hub
        return Location(
            "problem",
            problem=f"MISSING: {beside} does not exist",
            error=f"{ref}: checkpoint folder not found ({beside} does not exist)",
        )
    from huggingface_hub.errors import HFValidationError

    try:
        cached = _hub_cached(ref, revision)
    except HFValidationError:
        return Location(
            "problem",
            problem=f"MISSING: {ref!r} is neither a local folder nor a valid hub id",
            error=f"{ref}: checkpoint folder not found, and not a valid hub id either",
        )
    if cached:
        return Location("hub-cached", detail="hub, in the local cache")
    return Location("hub-download", detail="hub, to download")


def resolve_checkpoint(
    ref: str,
    revision: str | None = None,
    base_dir: Path | None = None,
    cache_root: Path | None = None,
) -> Path:
    """A local folder for a checkpoint reference: builds quickstart items, downloads hub ids."""
    loc = locate_checkpoint(ref, revision, base_dir)
    if loc.kind == "quickstart":
        from mergekit_ir.storage.cache import default_cache_dir

        path = quickstart.resolve(ref, cache_root or default_cache_dir())
        assert path is not None
        return path
    if loc.kind == "local":
        assert loc.path is not None
        return loc.path
    if not loc.ok:
        raise CheckpointError(loc.error)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=ref, revision=revision, allow_patterns=HUB_PATTERNS))
    except Exception as exc:
        if hub_offline():
            raise CheckpointError(
                f"{ref}: not a local folder and not in the hub cache, and HF_HUB_OFFLINE is set "
                "so the hub is not contacted; unset HF_HUB_OFFLINE or pass a local folder"
            ) from None
        raise CheckpointError(
            f"{ref}: not a local folder and the hub download failed ({type(exc).__name__}); "
            "check the id and network, or pass a local folder"
        ) from None


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` tells us not to contact the hub (as huggingface_hub reads it)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


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
