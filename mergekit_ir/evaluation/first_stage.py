"""The first-stage (retrieval backend) plugin type."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from mergekit_ir.params import Param

# A run: query id -> document id -> score. Ids are always strings.
Run = dict[str, dict[str, float]]


class FirstStage(Protocol):
    """An index over one corpus."""

    def search(self, queries: Mapping[str, str], k: int) -> Run:
        """Top-``k`` documents per query, best first, ties broken by document id."""
        ...


@dataclass(frozen=True)
class FirstStageKind:
    """A named retrieval backend.

    ``build(corpus, params, cache_dir)`` returns a :class:`FirstStage`; ``corpus``
    maps document id to a :class:`mergekit_ir.evaluation.datasets.Document`. ``cache_dir`` is
    where the backend may persist its index, or ``None`` to keep it in memory.
    """

    name: str
    description: str
    build: Callable[[Mapping[str, Any], Mapping[str, Any], Path | None], FirstStage]
    params: tuple[Param, ...] = ()
