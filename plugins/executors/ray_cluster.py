"""The ``ray`` executor: triplet jobs on a Ray cluster, one actor per worker slot.

Each actor (``num_gpus`` = ``gpus_per_worker``, fractional for small models) takes whole
triplet jobs from an actor pool: it loads ΘT and the task vectors once and runs the α
sweep and the baselines in place, writing model runs to the shared cache and returning
runs and numbers (never models). The driver folds the outcomes into the report exactly as
a local run does. Before them, the first stage of every split not yet cached runs as one
Ray task per split (:meth:`RayExecutor.first_stages`). A worker process that dies is
restarted and its job retried by Ray (``max_retries``); a job that fails for a reason of its
own (a bad checkpoint) is reported as one line naming the triplet once the other jobs have
finished, so their runs are in the cache for the rerun.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from typing import Any

from mergekit_ir import (
    ExecutorKind,
    FirstStageJobs,
    MergeIRError,
    Param,
    PluginError,
    Ranking,
    TripletJobs,
    TripletOutcome,
    WorkerSetup,
    hookimpl,
    run_first_stage_job,
    run_triplet_job,
)

log = logging.getLogger(__name__)

PARAMS = (
    Param(
        "address",
        str,
        None,
        "cluster to join: auto (a running `ray start` cluster), ray://HOST:10001 (Ray Client); "
        "default: $RAY_ADDRESS, an already connected session, else a new local cluster",
    ),
    Param("workers", int, None, "actors to start (default: as many as the cluster fits)", min=1),
    Param("gpus_per_worker", float, 0.0, "GPUs per actor; fractions share a GPU", min=0),
    Param("cpus_per_worker", float, 1.0, "CPUs per actor (also its torch threads)", min=0),
    Param(
        "max_retries",
        int,
        3,
        "restarts of a dead worker process and retries of its job",
        min=0,
    ),
)


@dataclass
class JobFailure:
    """A job that raised: sent back as a value so the pool goes on with the others."""

    triplet: str
    error: BaseException


class TripletWorker:
    """One worker slot: runs whole triplet jobs on the splits the driver put in the object store."""

    def __init__(self, setup: WorkerSetup):
        self.setup = setup

    def run(self, splits: Any, triplet: str) -> TripletOutcome | JobFailure:
        try:
            return run_triplet_job(self.setup, splits, triplet)
        except Exception as exc:  # reported by the driver, one line naming the triplet
            log.error("triplet %s failed:\n%s", triplet, traceback.format_exc())
            try:
                import pickle

                pickle.dumps(exc)
            except Exception:
                exc = RuntimeError(str(exc))
            return JobFailure(triplet, exc)


def import_ray():
    try:
        import ray
    except ImportError:
        raise PluginError(
            "executor 'ray': Ray is not installed; pip install 'mergekit-ir[ray]' "
            '(or `pip install "ray[default]"`), or use --executor local'
        ) from None
    return ray


@cache
def remote_worker():
    return import_ray().remote(TripletWorker)


@cache
def remote_first_stage():
    return import_ray().remote(run_first_stage_job)


@dataclass
class RayExecutor:
    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    max_retries: int = 3
    _started_here: bool = field(default=False, init=False, repr=False)

    def connect(self, ray: Any) -> None:
        """Join (or start) the cluster once per run; :meth:`disconnect` undoes what this did."""
        if not ray.is_initialized():
            ray.init(
                address=self.address,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
            self._started_here = True

    def disconnect(self, ray: Any) -> None:
        if self._started_here:
            ray.shutdown()
            self._started_here = False

    def first_stages(self, jobs: FirstStageJobs) -> dict[tuple[str, str], Ranking]:
        """Each split's first stage (index + retrieval) as a Ray task, retried if its worker
        dies; the tasks write the shared cache and return the runs."""
        ray = import_ray()
        self.connect(ray)
        try:
            setup = self.placed(jobs.worker_setup())
            task = remote_first_stage().options(
                num_cpus=self.cpus_per_worker, max_retries=self.max_retries
            )
            refs = {job: task.remote(setup, *job) for job in jobs.jobs}
            jobs.echo(f"ray: {len(jobs.jobs)} first-stage job(s) ({jobs.backend})")
            out = {}
            for (dataset, role), ref in refs.items():
                try:
                    out[(dataset, role)] = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:
                    cause = exc.cause if isinstance(exc.cause, BaseException) else exc
                    text = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
                    raise MergeIRError(f"first stage of {dataset}:{role}: {text}") from None
            return out
        except BaseException:
            self.disconnect(ray)
            raise

    def slots(self, ray: Any, jobs: int) -> int:
        if self.workers is not None:
            return max(1, min(self.workers, jobs))
        res = ray.cluster_resources()
        if self.gpus_per_worker > 0:
            fit = int(res.get("GPU", 0) / self.gpus_per_worker + 1e-9)
            if fit < 1:
                raise MergeIRError(
                    f"executor 'ray': gpus_per_worker={self.gpus_per_worker:g} but the cluster has "
                    f"{res.get('GPU', 0):g} GPUs; lower gpus_per_worker or add GPU nodes"
                )
        else:
            fit = int(res.get("CPU", 1) / max(self.cpus_per_worker, 1e-9) + 1e-9)
        return max(1, min(fit, jobs))

    def placed(self, setup: WorkerSetup) -> WorkerSetup:
        """The device as an actor sees it: Ray gives a GPU actor only its own GPU(s), so
        ``cuda:N`` means that actor's ``cuda``; an actor without a GPU cannot use one."""
        device = setup.device
        if device.startswith("cuda") and self.gpus_per_worker <= 0:
            raise MergeIRError(
                f"--device {device} with the ray executor needs --gpus-per-worker > 0 "
                "(e.g. 1, or 0.5 to share a GPU); or use --device auto/cpu"
            )
        if device.startswith("cuda:"):
            return replace(setup, device="cuda")
        return setup

    def run_triplets(self, jobs: TripletJobs) -> Iterator[TripletOutcome]:
        ray = import_ray()
        from ray.util import ActorPool
        from tqdm import tqdm

        triplets = jobs.triplets
        self.connect(ray)
        actors: list[Any] = []
        bar = None
        try:
            n = self.slots(ray, len(triplets))
            options = {
                "num_cpus": self.cpus_per_worker,
                "num_gpus": self.gpus_per_worker,
                "max_restarts": self.max_retries,
                "max_task_retries": self.max_retries,
            }
            setup = self.placed(jobs.worker_setup())
            actors = [remote_worker().options(**options).remote(setup) for _ in range(n)]
            splits = ray.put(jobs.wire_splits())  # once, shared by the actors of a node
            jobs.echo(
                f"ray: {len(triplets)} triplet job(s) on {n} worker(s) "
                f"({self.gpus_per_worker:g} GPU, {self.cpus_per_worker:g} CPU each)"
            )
            pool = ActorPool(actors)
            for t in triplets:
                pool.submit(lambda a, t: a.run.remote(splits, t), t)
            bar = tqdm(total=len(triplets), desc="triplets", unit="job", disable=not jobs.progress)
            done: dict[str, TripletOutcome] = {}
            failures: list[JobFailure] = []
            finished: set[str] = set()
            order = iter(triplets)
            nxt = next(order, None)
            while pool.has_next():
                try:
                    res = pool.get_next_unordered()
                except ray.exceptions.RayActorError as exc:
                    left = [t for t in triplets if t not in finished]
                    raise MergeIRError(
                        f"triplet job(s) {', '.join(left)}: a Ray worker died more than "
                        f"max_retries={self.max_retries} times ({type(exc).__name__}); "
                        "see the Ray logs (/tmp/ray/session_latest/logs), then rerun: finished "
                        "jobs are cached"
                    ) from None
                bar.update(1)
                finished.add(res.triplet)
                if isinstance(res, JobFailure):
                    failures.append(res)
                    continue
                done[res.triplet] = res
                while nxt is not None and nxt in done:  # the report is built in registry order
                    yield done.pop(nxt)
                    nxt = next(order, None)
            if failures:
                raise failure_error(failures)
        finally:
            if bar is not None:
                bar.close()
            for a in actors:
                ray.kill(a, no_restart=True)
            self.disconnect(ray)


def failure_error(failures: list[JobFailure]) -> MergeIRError:
    first = failures[0]
    more = f" ({len(failures) - 1} more job(s) failed)" if len(failures) > 1 else ""
    err = first.error
    text = str(err).splitlines()[0] if str(err) else ""
    if isinstance(err, MergeIRError):
        return type(err)(f"triplet {first.triplet}: {text}{more}")
    return MergeIRError(
        f"triplet {first.triplet}: the job failed ({type(err).__name__}: {text}){more}; "
        "the worker traceback is in the Ray logs"
    )


def create(params: Mapping[str, Any]) -> RayExecutor:
    import_ray()  # a missing Ray is one line before any work
    return RayExecutor(**dict(params))


@hookimpl
def register_executors(register):
    register(
        ExecutorKind(
            name="ray",
            description="triplet jobs on a Ray cluster, one actor per worker slot (pip install 'mergekit-ir[ray]')",
            create=create,
            params=PARAMS,
        )
    )
