"""Executors: where an experiment's per-triplet work runs (in process, on a cluster...).

The runner loads every dataset split and runs its first stage (on the driver, or as the
executor's ``first_stages`` jobs when it offers them), then hands the triplets to an
executor. A triplet's job is the unit of work: one process loads ΘT and
the task vectors once and runs the whole α sweep and the baselines in place (scattering
α points over processes would lose the in-place sweep). A job returns a
:class:`TripletOutcome` — runs and the tuned α, never models — and the driver builds the
report from the outcomes exactly as it does for a local run, so an executor cannot change
a number.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from mergekit_ir.params import Param

if TYPE_CHECKING:
    from mergekit_ir.evaluation.first_stage import Run
    from mergekit_ir.experiments.registry import Registry
    from mergekit_ir.experiments.runner import ExperimentRun, Split, TunedAlpha


@dataclass
class TripletOutcome:
    """What one triplet's job hands back to the driver (small: runs and numbers)."""

    triplet: str
    tuned: TunedAlpha
    variants: dict[str, dict[str, Run]]  # row key -> split id -> model run
    notes: list[str] = field(default_factory=list)  # scorer warnings, for the report
    selection: Any = None  # an AlphaSelection when tuning.alpha names selectors
    timings: dict[str, float] = field(default_factory=dict)  # worker seconds per stage
    cache_events: list[tuple[str, str, str]] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)  # what the job echoed, in order
    host: str = ""
    wall_s: float = 0.0


class Executor(Protocol):
    """Runs triplet jobs; yields their outcomes in the order of ``triplets``.

    An executor may also offer ``first_stages(run, jobs) -> {(dataset, role): Run}`` to run
    the first stage of the splits that are not cached yet (``role`` is ``test`` or ``dev``;
    :func:`run_first_stage_job` is the job); without it the driver runs them itself.
    """

    def run_triplets(
        self, run: ExperimentRun, triplets: Sequence[str]
    ) -> Iterator[TripletOutcome]: ...


@dataclass(frozen=True)
class ExecutorKind:
    """An executor plugin: ``create(params)`` builds an :class:`Executor` for one run."""

    name: str
    description: str
    create: Callable[[Mapping[str, Any]], Executor]
    params: tuple[Param, ...] = ()


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


def worker_setup(run: ExperimentRun) -> WorkerSetup:
    opts = run.opts
    return WorkerSetup(
        registry=run.reg,
        experiment=run.exp.name,
        cache_root=opts.cache.root,
        cache_enabled=opts.cache.enabled,
        device=opts.device,
        datasets=tuple(run.datasets),
        batch_size=opts.batch_size,
        dtype=opts.dtype,
        strict=opts.strict,
    )


def wire_splits(run: ExperimentRun) -> tuple[dict[str, Split], dict[str, Split]]:
    """The prepared test and dev splits as workers need them: each corpus cut to the
    documents its first stage retrieved (all a re-ranker reads), fingerprints kept."""
    from dataclasses import replace

    def cut(split: Split) -> Split:
        ds = split.dataset
        wanted = {d for docs in split.first_stage.values() for d in docs}
        corpus = {d: doc for d, doc in ds.corpus.items() if d in wanted}
        return replace(split, dataset=replace(ds, corpus=corpus, _fingerprint=ds.fingerprint()))

    return (
        {k: cut(v) for k, v in run.tests.items()},
        {k: cut(v) for k, v in run.devs.items()},
    )


def run_triplet_job(
    setup: WorkerSetup, splits: tuple[dict[str, Split], dict[str, Split]], triplet: str
) -> TripletOutcome:
    """One triplet's job in a worker process: the same steps as a local run, on the same
    splits, with its own timer, cache bookkeeping and echo returned to the driver."""
    start = time.perf_counter()
    messages: list[str] = []
    run = _worker_run(setup, messages.append)
    run.tests, run.devs = splits
    outcome = run.triplet_outcome(triplet)
    outcome.timings = dict(run.timer.seconds)
    outcome.cache_events = list(run.opts.cache.events)
    outcome.messages = messages
    outcome.host = socket.gethostname()
    outcome.wall_s = time.perf_counter() - start
    return outcome


def _worker_run(setup: WorkerSetup, echo: Callable[[str], None]) -> ExperimentRun:
    from mergekit_ir.experiments.runner import ExperimentRun, RunOptions
    from mergekit_ir.storage.cache import Cache

    opts = RunOptions(
        out_dir=Path("."),  # workers write no outputs, only cache entries
        cache=Cache(setup.cache_root, enabled=setup.cache_enabled),
        device=setup.device,
        datasets=setup.datasets,
        progress=False,
        batch_size=setup.batch_size,
        dtype=setup.dtype,
        strict=setup.strict,
        echo=echo,
    )
    return ExperimentRun(setup.registry, setup.experiment, opts)


def run_first_stage_job(setup: WorkerSetup, dataset: str, role: str) -> Run:
    """One split's first stage in a worker: load the split where the worker is (its data
    paths must mean the same there), index, retrieve, write the cache entry, return the run."""
    run = _worker_run(setup, lambda _line: None)
    return run.first_stage_split(run.load_split(dataset, role), role).first_stage


def resolve_executor(
    exp_executor: str,
    exp_params: Mapping[str, Any],
    exp_path: str,
    name: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Executor:
    """The run's executor: the experiment's ``executor:`` block, overridden by the command
    line (``--executor`` picks another kind; ``--address``/``--workers``/... set its options)."""
    from mergekit_ir.params import check_params
    from mergekit_ir.plugin_host import catalog

    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    if name is None or name == exp_executor:
        kind_name, params, where = exp_executor, dict(exp_params), f"{exp_path}.executor"
    else:
        kind_name, params, where = name, {}, f"--executor {name}"
    kind = catalog().executor(kind_name, "--executor" if name else f"{exp_path}.executor.kind")
    if given:
        params.update(given)
        where = f"--executor {kind_name}"
    params = check_params(kind.params, params, where, f"executor '{kind_name}'")
    return kind.create(params)
