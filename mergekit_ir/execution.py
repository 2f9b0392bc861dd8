"""The executor contract: where an experiment's per-triplet work runs (in process, a cluster...).

The runner loads every dataset split and runs its first stage (on the driver, or as the
executor's ``first_stages`` jobs when it offers them), then hands the triplets to an executor
as one :class:`TripletJobs` value. A triplet's job is the unit of work: one process loads ΘT
and the task vectors once and runs the whole α sweep and the baselines in place (scattering α
points over processes would lose the in-place sweep). A job returns a :class:`TripletOutcome`
— rankings and the tuned α, never models — and the driver builds the report from the outcomes
exactly as it does for a local run, so an executor cannot change a number.

Executors see only the typed values below, never the runner: an executor plugin needs nothing
else from the package than these and the job functions of the public API
(``mergekit_ir.run_triplet_job``, ``mergekit_ir.run_first_stage_job``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from mergekit_ir.params import Param
from mergekit_ir.ranking import Ranking
from mergekit_ir.results import AlphaSelection, TunedAlpha


@dataclass
class TripletOutcome:
    """What one triplet's job hands back to the driver (small: rankings and numbers)."""

    triplet: str
    tuned: TunedAlpha
    variants: dict[str, dict[str, Ranking]]  # row key -> split id -> model ranking
    notes: list[str] = field(default_factory=list)  # scorer warnings, for the report
    selection: AlphaSelection | None = None  # when tuning.alpha names selectors
    timings: dict[str, float] = field(default_factory=dict)  # worker seconds per stage
    cache_events: list[tuple[str, str, str]] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)  # what the job echoed, in order
    host: str = ""
    wall_s: float = 0.0


@dataclass(frozen=True)
class TripletJobs:
    """The triplet jobs of one run, as an executor receives them.

    ``run_here(triplet)`` runs one job in this process (what the ``local`` executor does);
    an executor that runs jobs elsewhere ships ``worker_setup()`` (picklable, once per worker)
    and ``wire_splits()`` (the prepared splits, cut to what re-rankers read) and calls
    ``mergekit_ir.run_triplet_job(setup, splits, triplet)`` there. Both are computed on demand,
    so an in-process run never pays for them.
    """

    triplets: tuple[str, ...]
    run_here: Callable[[str], TripletOutcome]
    worker_setup: Callable[[], Any]
    wire_splits: Callable[[], Any]
    echo: Callable[[str], None] = print
    progress: bool = True


@dataclass(frozen=True)
class FirstStageJobs:
    """First-stage jobs an executor may run for the splits that are not cached yet:
    ``(dataset, role)`` pairs, ``role`` being ``test`` or ``dev``; the job is
    ``mergekit_ir.run_first_stage_job(setup, dataset, role)``."""

    jobs: tuple[tuple[str, str], ...]
    backend: str  # the first-stage backend's name, for messages
    worker_setup: Callable[[], Any]
    echo: Callable[[str], None] = print


class Executor(Protocol):
    """Runs triplet jobs; yields their outcomes in the order of ``jobs.triplets``.

    An executor may also offer ``first_stages(jobs: FirstStageJobs) -> {(dataset, role):
    Ranking}``; without it the driver runs the first stages itself.
    """

    def run_triplets(self, jobs: TripletJobs) -> Iterator[TripletOutcome]: ...


@dataclass(frozen=True)
class ExecutorKind:
    """An executor plugin: ``create(params)`` builds an :class:`Executor` for one run, from
    its declared ``params`` (the registry's ``executor:`` block or ``--executor-param``)."""

    name: str
    description: str
    create: Callable[[Mapping[str, Any]], Executor]
    params: tuple[Param, ...] = ()


def first_stage_offload(executor: Any) -> Callable[[FirstStageJobs], Mapping[Any, Ranking]] | None:
    """The executor's ``first_stages`` method, when it offers one."""
    return getattr(executor, "first_stages", None)
