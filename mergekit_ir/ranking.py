"""The two shapes every part of an IR experiment passes around, named once.

A :data:`Ranking` is what a first stage or a re-ranker produces for a set of queries (TREC
calls it a "run"; here "run" means an experiment's execution, so the data is a ranking).
:data:`Qrels` are the relevance judgments it is evaluated against. Ids are always strings.
"""

from __future__ import annotations

#: query id -> document id -> score (higher is better).
Ranking = dict[str, dict[str, float]]

#: query id -> document id -> graded relevance.
Qrels = dict[str, dict[str, int]]
