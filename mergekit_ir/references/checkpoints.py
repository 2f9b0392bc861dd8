"""Where a checkpoint comes from: the one answer for the dry run, the loader and the merge.

A checkpoint reference is a ``quickstart:`` item, a local folder (relative paths are read
beside the registry first), or a Hugging Face hub id. :func:`locate_checkpoint` answers
without downloading or building anything (the dry run prints its answer);
:func:`resolve_checkpoint` then acts on the very same answer, so the two can never disagree
about a path. A domain input may carry a ``lora:`` or ``task_vector:`` prefix
(:meth:`DomainRef.parse`, the one parser of that syntax). This sits below the merge engine, as
mergekit keeps ``ModelReference`` in its lowest layer, so merging never reaches up for it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mergekit_ir.errors import CheckpointError
from mergekit_ir.references import quickstart

#: The kinds of domain input: a full ΘD checkpoint, a PEFT LoRA adapter, a saved task vector.
DOMAIN_KINDS = ("checkpoint", "lora", "task_vector")


@dataclass(frozen=True)
class DomainRef:
    """A domain input: a full ΘD checkpoint, a PEFT LoRA adapter, or a saved task vector."""

    ref: str
    kind: str = "checkpoint"

    @classmethod
    def parse(cls, text: str) -> DomainRef:
        """``lora:DIR`` / ``task_vector:DIR`` / anything else is a checkpoint (folder or hub id)."""
        kind, sep, rest = text.partition(":")
        if sep and kind in DOMAIN_KINDS[1:]:
            return cls(rest, kind)
        return cls(text)

    def text(self) -> str:
        """The reference as a user writes it (``lora:DIR`` for an adapter)."""
        return self.ref if self.kind == "checkpoint" else f"{self.kind}:{self.ref}"


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
    """A local folder for a checkpoint reference: builds quickstart items (under
    ``cache_root``, which the entry point resolved), downloads hub ids."""
    loc = locate_checkpoint(ref, revision, base_dir)
    if loc.kind == "quickstart":
        if cache_root is None:
            raise CheckpointError(
                f"{ref}: a quickstart checkpoint needs a cache folder to build in"
            )
        path = quickstart.resolve(ref, cache_root)
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
