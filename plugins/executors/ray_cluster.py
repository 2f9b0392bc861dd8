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

Nothing waits without a bound (docs/distributed.md, "Checked before any work"): the address is
checked for its form when the executor is created and for an answering cluster before
``ray.init`` (:func:`probe`, at most ``connect_timeout`` seconds), and the per-actor resources
are checked against the cluster's live nodes before any task or actor is created
(:meth:`RayExecutor.check_fit`): a request no node can hold would wait forever.
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import time
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

#: Default seconds the driver gives a cluster address to answer before one line says it did
#: not: twice Ray's own GCS connect timeout (``gcs_rpc_server_connect_timeout_s`` = 5 s), and
#: long enough for three lost TCP SYNs (retransmitted after 1, 2 and 4 s).
CONNECT_TIMEOUT_S = 10.0

PARAMS = (
    Param(
        "address",
        str,
        None,
        "cluster to join: auto (a running `ray start` cluster), HOST:PORT (its GCS, e.g. "
        "10.0.0.5:6379), ray://HOST:PORT (Ray Client, e.g. ray://head:10001), local (a new "
        "local cluster); default: $RAY_ADDRESS, an already connected session, else a new "
        "local cluster",
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
    Param(
        "connect_timeout",
        float,
        CONNECT_TIMEOUT_S,
        "seconds the cluster at `address` has to answer before the run stops with one line",
        min=1,
        max=600,
    ),
    Param(
        "check_resources",
        bool,
        True,
        "refuse per-worker CPUs/GPUs that no live node has (false: an autoscaling cluster "
        "that adds larger nodes on demand)",
    ),
)

ADDRESS_FORMS = (
    "give auto, HOST:PORT (the GCS `ray start --head` prints, e.g. 10.0.0.5:6379), "
    "ray://HOST:PORT (Ray Client, e.g. ray://head:10001), local, or leave it out"
)
_HOST = r"\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?"
_ADDRESS = re.compile(rf"(?P<client>ray://)?(?P<host>{_HOST}):(?P<port>[0-9]{{1,5}})")
#: One cheap call per service: any answer but UNIMPLEMENTED shows the right service is there.
_GCS_METHOD = "/ray.rpc.NodeInfoGcsService/GetClusterId"
_CLIENT_METHOD = "/ray.rpc.RayletDriver/ClusterInfo"


@dataclass(frozen=True)
class Address:
    """A concrete cluster address: the GCS (``HOST:PORT``) or a Ray Client server
    (``ray://HOST:PORT``)."""

    host: str  # an IPv6 host keeps its brackets
    port: int
    client: bool

    def __str__(self) -> str:
        return ("ray://" if self.client else "") + f"{self.host}:{self.port}"

    @property
    def service(self) -> str:
        return "Ray Client server" if self.client else "Ray GCS"


def check_address(text: Any, what: str = "address") -> str | None:
    """``text`` if it is a form ``ray.init`` takes (None for empty), else one line naming it."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    if isinstance(text, str) and text.strip() in ("auto", "local"):
        return text.strip()
    if not isinstance(text, str) or split_address(text) is None:
        raise MergeIRError(f"executor 'ray': {what}={text!r} is not a Ray address; {ADDRESS_FORMS}")
    return text.strip()


def split_address(text: str) -> Address | None:
    """``HOST:PORT`` or ``ray://HOST:PORT`` as an :class:`Address`; None for any other text."""
    m = _ADDRESS.fullmatch(text.strip())
    if m is None or not 0 < int(m["port"]) < 65536:
        return None
    return Address(m["host"], int(m["port"]), bool(m["client"]))


#: What to do when a given address does not answer.
CHECK_CLUSTER = (
    "check that the cluster is up (`ray status`) and that this machine reaches that port, "
    "or leave address out to start a local cluster"
)
#: ... and when Ray found the address in its record of the last `ray start` on this machine.
STALE_RECORD = (
    "that is the cluster last started on this machine with `ray start` (Ray's record in its "
    "temp folder, ray_current_cluster); if it has stopped, run `ray stop` to clear the record, "
    "or give address=local to start a new local cluster"
)


def probe(
    target: Address, timeout: float, what: str | None = None, fix: str = CHECK_CLUSTER
) -> None:
    """Raise one line unless the :attr:`Address.service` at ``target`` answers within
    ``timeout`` seconds: a TCP connection, an HTTP/2 (gRPC) channel, then one call of that
    service. ``ray.init`` itself would retry an address that does not answer for minutes.
    ``what`` names the option in messages (default ``address=TARGET``), ``fix`` what to do."""
    what = what or f"address={target}"
    deadline = time.monotonic() + timeout
    host = target.host.strip("[]")
    try:
        with socket.create_connection((host, target.port), timeout=timeout):
            pass
    except socket.gaierror:
        raise MergeIRError(f"executor 'ray': {what}: cannot resolve host {host!r}; {fix}") from None
    except TimeoutError:
        raise MergeIRError(
            f"executor 'ray': {what}: no answer within {timeout:g}s (connect_timeout); {fix}"
        ) from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise MergeIRError(f"executor 'ray': {what}: cannot connect ({reason}); {fix}") from None
    if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
        return  # a TLS cluster: the plain-text gRPC check below would not get through
    import grpc

    # as Ray's own channels: no HTTP proxy unless Ray is told to use one
    proxy = int(os.environ.get("RAY_grpc_enable_http_proxy", "0").lower() in ("1", "true"))  # noqa: SIM112
    channel = grpc.insecure_channel(
        f"{target.host}:{target.port}", options=[("grpc.enable_http_proxy", proxy)]
    )
    not_it = f"executor 'ray': {what}: the port answers, but not as a {target.service}"
    hint = (
        "; a Ray Client server (usually port 10001) needs ray://HOST:PORT"
        if not target.client
        else "; the GCS (usually port 6379) is HOST:PORT, without ray://"
    )
    try:
        try:
            grpc.channel_ready_future(channel).result(timeout=max(deadline - time.monotonic(), 0.1))
        except grpc.FutureTimeoutError:
            raise MergeIRError(
                f"{not_it} within {timeout:g}s (connect_timeout); check the port{hint}"
            ) from None
        call = channel.unary_unary(_CLIENT_METHOD if target.client else _GCS_METHOD)
        try:
            call(
                _client_ping() if target.client else b"",
                timeout=max(deadline - time.monotonic(), 0.1),
            )
        except grpc.RpcError as exc:
            code = exc.code() if callable(getattr(exc, "code", None)) else None
            if code == grpc.StatusCode.UNIMPLEMENTED:
                raise MergeIRError(f"{not_it}{hint}") from None
            if code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
                raise MergeIRError(
                    f"executor 'ray': {what}: the {target.service} did not answer "
                    f"within {timeout:g}s (connect_timeout); {fix}"
                ) from None
            # any other answer (e.g. UNAUTHENTICATED: it wants a token) is that service
    finally:
        channel.close()


def _client_ping() -> bytes:
    """``ClusterInfoRequest(type=PING)``: what the Ray Client itself sends first."""
    try:
        from ray.core.generated import ray_client_pb2 as pb

        return pb.ClusterInfoRequest(type=pb.ClusterInfoType.PING).SerializeToString()
    except Exception:  # another Ray layout: the same bytes (field 1, PING = 6)
        return b"\x08\x06"


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


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
    connect_timeout: float = CONNECT_TIMEOUT_S
    check_resources: bool = True
    _started_here: bool = field(default=False, init=False, repr=False)
    _checked: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        self.address = check_address(self.address)
        if self.gpus_per_worker > 1 and not float(self.gpus_per_worker).is_integer():
            raise MergeIRError(
                f"executor 'ray': gpus_per_worker={self.gpus_per_worker:g}: above 1 Ray takes "
                "whole GPUs only; give 1, 2, ... (or a fraction below 1 to share a GPU)"
            )

    def connect(self, ray: Any) -> None:
        """Join (or start) the cluster once per run, then check that an actor fits on a node;
        :meth:`disconnect` undoes what this did. Neither step waits without a bound."""
        if not ray.is_initialized():
            target, shown = self.target(ray)
            if target is not None:
                recorded = self.address in (None, "auto") and not os.environ.get("RAY_ADDRESS")
                fix = STALE_RECORD if recorded else CHECK_CLUSTER
                probe(target, self.connect_timeout, shown, fix)
            try:
                ray.init(
                    address=self.address,
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                )
            except (ConnectionError, RuntimeError, TimeoutError, ValueError) as exc:
                where = shown if target is not None else "a local cluster"
                raise MergeIRError(
                    f"executor 'ray': could not connect to {where}: {first_line(exc)}"
                ) from None
            self._started_here = True
        if not self._checked:
            try:
                self.check_fit(ray)
            except BaseException:
                self.disconnect(ray)
                raise
            self._checked = True

    def target(self, ray: Any) -> tuple[Address | None, str]:
        """The address ``ray.init`` will dial (None: it starts a local cluster) and how
        messages name it (``address=…`` or ``$RAY_ADDRESS=…``, as given, then what Ray dials
        if that differs). Ray's own resolution is used where it has one: ``auto`` finds the
        newest local cluster, ``127.0.0.1`` becomes the node's IP."""
        name, addr = "address", self.address
        env = os.environ.get("RAY_ADDRESS", "").strip()
        if addr in (None, "auto") and env:
            name, addr = "$RAY_ADDRESS", check_address(env, "$RAY_ADDRESS")

        def named(target: Address | None) -> tuple[Address | None, str]:
            shown = f"{name}={addr}" if addr is not None else "no address given"
            if target is not None and str(target) != addr:
                shown += f" (Ray dials {target})"
            return target, shown

        if addr == "local":
            return None, f"{name}=local"
        if addr is not None and addr.startswith("ray://"):
            return named(split_address(addr))
        services = getattr(getattr(ray, "_private", None), "services", None)
        resolve = getattr(services, "canonicalize_bootstrap_address", None)
        if resolve is None:  # not the Ray we know: probe what was given, as given
            return named(split_address(addr) if addr not in (None, "auto") else None)
        try:
            resolved = resolve(addr)
        except ConnectionError:  # auto, and no cluster runs on this machine
            raise MergeIRError(
                f"executor 'ray': {name}=auto but no running Ray cluster was found on this "
                "machine; start one (`ray start --head`), give HOST:PORT, or leave address out "
                "to start a local cluster"
            ) from None
        except ValueError:
            raise MergeIRError(
                f"executor 'ray': {name}={addr!r} is not a Ray address; {ADDRESS_FORMS}"
            ) from None
        return named(split_address(resolved) if resolved else None)

    def disconnect(self, ray: Any) -> None:
        if self._started_here:
            ray.shutdown()
            self._started_here = False
            self._checked = False

    def check_fit(self, ray: Any) -> int:
        """How many actors (``cpus_per_worker`` and ``gpus_per_worker`` each, on one node) the
        live nodes hold together; a request that fits no node is one line naming the option,
        since Ray would keep it pending forever. ``check_resources=false`` skips the check
        (an autoscaling cluster adds nodes for pending requests) and counts 0."""
        if not self.check_resources:
            return 0
        nodes = [
            (float(res.get("CPU", 0.0)), float(res.get("GPU", 0.0)))
            for n in ray.nodes()
            if n.get("Alive", n.get("alive", True))
            for res in [n.get("Resources") or {}]
        ]
        cpus, gpus = self.cpus_per_worker, self.gpus_per_worker
        hint = "; on an autoscaling cluster with larger node types, set check_resources=false"
        if not nodes:
            raise MergeIRError(f"executor 'ray': the cluster has no live node{hint}")
        most_cpu = max(c for c, _ in nodes)
        most_gpu = max(g for _, g in nodes)
        if gpus > most_gpu + 1e-9:
            has = (
                "the cluster has no GPUs; use gpus_per_worker=0 (CPUs) or add GPU nodes"
                if most_gpu == 0
                else f"the largest node has {most_gpu:g} GPUs; lower gpus_per_worker"
            )
            raise MergeIRError(f"executor 'ray': gpus_per_worker={gpus:g} but {has}{hint}")
        if cpus > most_cpu + 1e-9:
            raise MergeIRError(
                f"executor 'ray': cpus_per_worker={cpus:g} but the largest node has "
                f"{most_cpu:g} CPUs; lower cpus_per_worker{hint}"
            )
        fit = sum(per_node(c, cpus, g, gpus) for c, g in nodes)
        if fit < 1:  # each fits somewhere, but not both on one node
            shapes = ", ".join(sorted({f"{c:g} CPU + {g:g} GPU" for c, g in nodes}))
            raise MergeIRError(
                f"executor 'ray': cpus_per_worker={cpus:g} with gpus_per_worker={gpus:g} fits "
                f"no single node (nodes: {shapes}); lower cpus_per_worker{hint}"
            )
        return fit

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

    def slots(self, ray: Any, jobs: int, echo: Any = None) -> int:
        """Actors to start: ``workers``, else as many as the nodes hold (one per job at most).
        More actors than the nodes hold would leave the extra ones pending with a job each, so
        ``workers`` is lowered to what fits (unless ``check_resources=false``)."""
        fit = self.check_fit(ray)
        if self.workers is not None:
            n = max(1, min(self.workers, jobs))
            if fit and n > fit:
                if echo is not None:
                    echo(
                        f"ray: workers={self.workers} but the nodes hold {fit} worker(s) of "
                        f"{self.cpus_per_worker:g} CPU and {self.gpus_per_worker:g} GPU; "
                        f"starting {fit}"
                    )
                n = fit
            return n
        if not fit:  # unchecked: count the cluster's totals, as before
            res = ray.cluster_resources()
            fit = per_node(
                float(res.get("CPU", 1)), self.cpus_per_worker,
                float(res.get("GPU", 0)), self.gpus_per_worker,
            )  # fmt: skip
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
        triplets = jobs.triplets
        self.connect(ray)
        actors: list[Any] = []
        bar = None
        try:
            n = self.slots(ray, len(triplets), jobs.echo)
            options = {
                "num_cpus": self.cpus_per_worker,
                "num_gpus": self.gpus_per_worker,
                "max_restarts": self.max_retries,
                "max_task_retries": self.max_retries,
            }
            setup = self.placed(jobs.worker_setup())
            from ray.util import ActorPool
            from tqdm import tqdm

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


def per_node(cpu: float, cpus: float, gpu: float, gpus: float) -> int:
    """Actors of ``cpus`` CPUs and ``gpus`` GPUs that one node of ``cpu`` CPUs and ``gpu`` GPUs
    holds (a huge number when the actor asks for neither)."""
    fits = [math.floor(have / need + 1e-9) for have, need in ((cpu, cpus), (gpu, gpus)) if need > 0]
    return min(fits) if fits else 1 << 30


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
    executor = RayExecutor(**dict(params))  # a malformed address is one line, before Ray loads
    import_ray()  # a missing Ray is one line before any work
    return executor


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
