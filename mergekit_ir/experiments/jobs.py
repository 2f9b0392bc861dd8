"""The job functions executors run, and the resolution of a run's executor.

The contract executors implement is :mod:`mergekit_ir.execution`; this module holds what a
worker process does with it: :func:`run_triplet_job` (one triplet's steps 2 and 3, the same as
a local run, on the same splits) and :func:`run_first_stage_job`, from a picklable
:class:`WorkerSetup`.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergekit_ir.execution import Executor, TripletOutcome
from mergekit_ir.experiments.splits import Split, WorkerSetup, wire_splits
from mergekit_ir.storage.cache import Cache

if TYPE_CHECKING:  # the runner (and torch) load when a job runs, not when a plugin imports us
    from mergekit_ir.experiments.runner import ExperimentRun
    from mergekit_ir.ranking import Ranking


def worker_setup(run: ExperimentRun) -> WorkerSetup:
    """What a worker process needs of ``run`` (see :meth:`ExperimentRun.worker_setup`)."""
    return run.worker_setup()


__all__ = ["Split", "WorkerSetup", "wire_splits"]  # re-exported for the public API


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
        backend=setup.backend,
    )
    return ExperimentRun(setup.registry, setup.experiment, opts)


def run_first_stage_job(setup: WorkerSetup, dataset: str, role: str) -> Ranking:
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
    """The run's executor, always through the plugin catalog: the experiment's ``executor:``
    block, overridden by the command line (``--executor`` picks another kind,
    ``--executor-param NAME=VALUE`` sets its options)."""
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
