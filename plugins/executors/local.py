"""The ``local`` executor: every triplet job in this process, one after another (the default)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from mergekit_ir import ExecutorKind, TripletJobs, TripletOutcome, hookimpl


class InProcess:
    """Triplet jobs one after another in this process."""

    def run_triplets(self, jobs: TripletJobs) -> Iterator[TripletOutcome]:
        for triplet in jobs.triplets:
            yield jobs.run_here(triplet)


def create(params: Mapping[str, Any]) -> InProcess:
    return InProcess()


@hookimpl
def register_executors(register):
    register(
        ExecutorKind(
            name="local",
            description="every triplet in this process, one after another (default)",
            create=create,
        )
    )
