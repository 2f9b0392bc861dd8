"""The first-stage (retrieval backend) plugin type."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from mergekit_ir.params import Param
from mergekit_ir.ranking import Ranking


class FirstStage(Protocol):
    """An index over one corpus."""

    def search(self, queries: Mapping[str, str], k: int) -> Ranking:
        """Top-``k`` documents per query, best first, ties broken by document id."""
        ...


@dataclass(frozen=True)
class FirstStageKind:
    """A named retrieval backend.

    ``build(corpus, params, cache_dir, language)`` returns a :class:`FirstStage`;
    ``corpus`` maps document id to a :class:`mergekit_ir.Document`, ``params`` are the
    experiment's ``first_stage`` options validated against ``params``, ``cache_dir`` is where
    the backend may persist its index (``None``: keep it in memory) and ``language`` is the
    dataset's declared language (a backend may ignore it).

    ``row`` and ``label`` name the backend's own row in result tables (its key in
    ``results.json`` and ``reported:`` blocks, and the printed label); both default to ``name``.
    """

    name: str
    description: str
    build: Callable[..., FirstStage]
    params: tuple[Param, ...] = ()
    row: str | None = None
    label: str | None = None

    @property
    def row_key(self) -> str:
        return self.row or self.name

    @property
    def row_label(self) -> str:
        return self.label or self.name
