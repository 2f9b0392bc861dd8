"""A dataset split with its first-stage ranking, and what a worker process receives of a run.

Kept apart from the runner so that the values shipped to workers (:class:`Split`,
:class:`WorkerSetup`, :func:`wire_splits`) are importable without the runner's machinery.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mergekit_ir.evaluation.datasets import Dataset
from mergekit_ir.experiments.registry import Registry
from mergekit_ir.ranking import Ranking


@dataclass
class Split:
    """One dataset split with its first-stage run (what every model re-ranks)."""

    dataset: Dataset
    first_stage: Ranking
    fs_key: str
    role: str  # test | dev

    @property
    def id(self) -> str:
        return f"{self.dataset.name}:{self.role}"


@dataclass(frozen=True)
class WorkerSetup:
    """Everything a worker process needs besides the splits; picklable, sent once per worker.

    Paths (the cache, local checkpoint folders, the registry's base folder) must mean the
    same on every node: the cache is the one place all workers share.
    """

    registry: Registry
    experiment: str
    cache_root: Path
    cache_enabled: bool
    device: str
    datasets: tuple[str, ...] | None
    batch_size: int | None
    dtype: str | None
    strict: bool = False
    backend: str | None = None  # --backend (None: the experiment's)


def wire_splits(run: Any) -> tuple[dict[str, Split], dict[str, Split]]:
    """The prepared test and dev splits as workers need them: each corpus cut to the
    documents its first stage retrieved (all a re-ranker reads), fingerprints kept."""

    def cut(split: Split) -> Split:
        ds = split.dataset
        wanted = {d for docs in split.first_stage.values() for d in docs}
        corpus = {d: doc for d, doc in ds.corpus.items() if d in wanted}
        return replace(split, dataset=replace(ds, corpus=corpus, _fingerprint=ds.fingerprint()))

    return (
        {k: cut(v) for k, v in run.tests.items()},
        {k: cut(v) for k, v in run.devs.items()},
    )
