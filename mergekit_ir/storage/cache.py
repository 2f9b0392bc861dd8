"""Content-addressed cache for first-stage runs, model runs and indexes.

A key is the hash of everything that determines the result (data fingerprints,
checkpoint fingerprints, scorer options, merge method and parameters, k...), so a
re-run — or a run resumed after being killed — redoes no finished work, and
changing any input recomputes only what it affects. Entries are written
atomically. ``events`` records hits and misses for the run log.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mergekit_ir.ranking import Ranking
from mergekit_ir.storage import atomic

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$MERGEIR_CACHE``, else ``$XDG_CACHE_HOME/mergekit_ir`` (``~/.cache/mergekit_ir``)."""
    env = os.environ.get("MERGEIR_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mergekit_ir"


def resolve_cache_root(given: str | Path | None) -> Path:
    """The one answer to "where is the cache": what the user gave, else the default. Entry
    points (the CLI, the Python API) call it once and pass the path down."""
    return Path(given).expanduser() if given else default_cache_dir()


def cache_key(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def is_run(value: Any) -> bool:
    """``{query id: {doc id: score}}`` with finite-or-not float scores: what a run entry holds."""
    return isinstance(value, dict) and all(
        isinstance(q, str)
        and isinstance(docs, dict)
        and all(isinstance(s, int | float) and not isinstance(s, bool) for s in docs.values())
        for q, docs in value.items()
    )


def discard(path: Path) -> None:
    """Remove a broken entry (file or folder) so the recomputed one can take its place."""
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


class Cache:
    def __init__(self, root: Path | None = None, enabled: bool = True):
        self.root = resolve_cache_root(root)
        self.enabled = enabled
        self.events: list[tuple[str, str, str]] = []  # (hit|miss, kind, label)

    def _path(self, kind: str, key: str) -> Path:
        return self.root / "runs" / kind / f"{key}.json"

    def load_run(
        self,
        kind: str,
        key: str,
        label: str = "",
        expected: Callable[[Ranking], bool] | None = None,
    ) -> Ranking | None:
        """The cached ranking under ``key``, or None. ``expected`` checks the entry against
        what the caller knows it must hold (its queries and candidates): an entry that reads
        but does not fit (``{}`` written over it, a truncated copy) is recomputed, with a
        warning, never taken for a result."""
        path = self._path(kind, key)
        if self.enabled and path.exists():
            try:
                run = json.loads(path.read_text())
                if not is_run(run):
                    raise ValueError("not a run")
                if expected is not None and not expected(run):
                    raise ValueError("not the queries and candidates it must rank")
            except (OSError, ValueError):  # unreadable, not JSON, a folder, the wrong shape
                log.warning("cache entry %s is unreadable or incomplete; recomputing", path)
                discard(path)
            else:
                self.events.append(("hit", kind, label or key))
                log.info("cache hit: %s %s", kind, label or key)
                return run
        self.events.append(("miss", kind, label or key))
        return None

    def has_run(self, kind: str, key: str) -> bool:
        """Whether an entry exists (not whether it reads back: :meth:`load_run` checks that)."""
        return self.enabled and self._path(kind, key).is_file()

    def save_run(self, kind: str, key: str, run: Ranking) -> None:
        atomic.write_text(self._path(kind, key), json.dumps(run, sort_keys=True))

    def load_notes(self, key: str) -> list[str]:
        """Warnings recorded when the run under ``key`` was computed (a warm run still
        reports them); an unreadable entry reads as none."""
        path = self._path("notes", key)
        if not (self.enabled and path.is_file()):
            return []
        try:
            notes = json.loads(path.read_text())
        except (OSError, ValueError):
            return []
        return [str(n) for n in notes] if isinstance(notes, list) else []

    def save_notes(self, key: str, notes: list[str]) -> None:
        if notes:
            atomic.write_text(self._path("notes", key), json.dumps(notes))

    def index_dir(self) -> Path | None:
        return self.root / "index" if self.enabled else None

    def hits(self) -> int:
        return sum(1 for e in self.events if e[0] == "hit")

    def misses(self) -> int:
        return sum(1 for e in self.events if e[0] == "miss")
