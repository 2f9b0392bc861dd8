"""Content fingerprints of checkpoint files, with the expensive hash cached safely.

The cache of runs is keyed by what a model *is*, so a fingerprint hashes file
contents (BLAKE2b, read in chunks): a copy with changed weights but the old size and
mtime (``cp -p``, ``rsync -a``) gets a new fingerprint, and identical weights in two
folders share one.

Hashing a 14 GB checkpoint takes seconds, so each file's digest is remembered in
``<cache>/fingerprints/`` under its identity on disk: device, inode, size, mtime_ns
*and* ctime_ns. A user can set mtime back (``touch -d``) but not ctime — any write
to the file moves it — so a remembered digest is only reused for an unchanged file.
A missing, unreadable or malformed cache entry is recomputed and replaced.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from mergekit_ir.storage import atomic

log = logging.getLogger(__name__)

CHUNK = 8 * 2**20
DIGEST_VERSION = "blake2b-1"


def fingerprint_cache_dir() -> Path:
    from mergekit_ir.storage.cache import resolve_cache_root

    return resolve_cache_root(None) / "fingerprints"


def _identity(st: os.stat_result, path: Path) -> str:
    return (
        f"{DIGEST_VERSION}:{path}:{st.st_dev}:{st.st_ino}:{st.st_size}:"
        f"{st.st_mtime_ns}:{st.st_ctime_ns}"
    )


def _hash_file(path: Path) -> str:
    h = hashlib.blake2b(digest_size=32)
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_digest(path: str | Path, cache_dir: Path | None = None) -> str:
    """BLAKE2b of one file's bytes (symlinks followed), remembered while the file is unchanged."""
    path = Path(path).resolve()
    cache_dir = cache_dir if cache_dir is not None else fingerprint_cache_dir()
    before = path.stat()
    identity = _identity(before, path)
    entry = cache_dir / f"{hashlib.sha256(identity.encode()).hexdigest()[:32]}.json"
    try:
        cached = json.loads(entry.read_text())
        if isinstance(cached, dict) and cached.get("identity") == identity:
            digest = cached.get("digest")
            if isinstance(digest, str) and len(digest) == 64:
                return digest
    except (OSError, ValueError):
        pass  # absent, unreadable, a folder, not JSON: recompute
    digest = _hash_file(path)
    if _identity(path.stat(), path) != identity:
        return digest  # changed while we read it: do not remember a digest of a moving target
    try:
        if entry.is_dir():
            import shutil

            shutil.rmtree(entry)
        atomic.write_text(entry, json.dumps({"identity": identity, "digest": digest}))
    except OSError as exc:  # a read-only cache only costs a re-hash next time
        log.debug("cannot remember the digest of %s in %s: %s", path, cache_dir, exc)
    return digest


def files_fingerprint(
    files: Iterable[tuple[str, Path]], salt: str = "", cache_dir: Path | None = None
) -> str:
    """16 hex digits over (name inside the checkpoint, content digest) pairs, name-sorted."""
    h = hashlib.sha256(f"{DIGEST_VERSION}\0{salt}\n".encode())
    for name, path in sorted(files):
        h.update(f"{name}\0{file_digest(path, cache_dir)}\n".encode())
    return h.hexdigest()[:16]


def folder_files(folder: Path) -> list[tuple[str, Path]]:
    """Every regular file under ``folder`` (symlinks followed), hidden files and folders aside."""
    out = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        out.append((rel.as_posix(), path))
    return out


def folder_fingerprint(folder: str | Path, salt: str = "", cache_dir: Path | None = None) -> str:
    """Content fingerprint of a whole folder (a LoRA adapter, a saved task vector)."""
    return files_fingerprint(folder_files(Path(folder)), salt, cache_dir)
