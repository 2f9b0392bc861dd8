"""Executor plugins without a cluster: config validation, option precedence, messages."""

from __future__ import annotations

import socket
import sys
import time
from types import SimpleNamespace

import pytest

from mergekit_ir import CheckpointError, ConfigError, MergeIRError, PluginError
from mergekit_ir.experiments.jobs import resolve_executor
from mergekit_ir.experiments.registry import load_registry
from mergekit_ir.experiments.runner import StageTimer
from mergekit_ir.plugin_host import catalog
from mergekit_ir_plugins.executors import ray_cluster
from mergekit_ir_plugins.executors.local import InProcess
from mergekit_ir_plugins.executors.ray_cluster import (
    JobFailure,
    RayExecutor,
    check_address,
    failure_error,
    probe,
    split_address,
)

REG = """
datasets:
  toy: {{beir: "quickstart:toy", test: test}}
triplets:
  tiny:
    scorer: {{kind: bi-encoder}}
    pretrained: "quickstart:pretrained"
    domain: "quickstart:domain"
    ir: "quickstart:ir"
experiments:
  e:
    triplets: [tiny]
    datasets: [toy]
    {executor}
"""


def registry(tmp_path, executor: str = ""):
    path = tmp_path / "registry.yaml"
    path.write_text(REG.format(executor=executor))
    return load_registry(path)


def test_both_executors_are_plugins():
    assert {"local", "ray"} <= set(catalog().executors)


def test_default_executor_is_local(tmp_path):
    exp = registry(tmp_path).experiment("e")
    assert exp.executor == "local" and exp.executor_params == {}
    assert isinstance(
        resolve_executor(exp.executor, exp.executor_params, "experiments.e"), InProcess
    )


def test_yaml_executor_block_is_validated_and_filled(tmp_path):
    exp = registry(tmp_path, "executor: {kind: ray, workers: 2, gpus_per_worker: 0.5}").experiment(
        "e"
    )
    assert exp.executor == "ray"
    assert exp.executor_params == {
        "address": None,
        "workers": 2,
        "gpus_per_worker": 0.5,
        "cpus_per_worker": 1.0,
        "max_retries": 3,
        "connect_timeout": 10.0,
        "check_resources": True,
    }


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("executor: {kind: dask}", "experiments.e.executor.kind: unknown executor 'dask'"),
        ("executor: {kind: ray, workers: 0}", "experiments.e.executor.workers: 0"),
        ("executor: {kind: ray, adress: auto}", "experiments.e.executor.adress: unknown parameter"),
        ("executor: {kind: ray, gpus_per_worker: -1}", "experiments.e.executor.gpus_per_worker"),
        ("executor: ray", "experiments.e.executor: "),
    ],
)
def test_bad_executor_blocks_name_their_yaml_path(tmp_path, block, message):
    with pytest.raises(MergeIRError) as info:  # ConfigError; PluginError for an unknown kind
        registry(tmp_path, block)
    assert str(info.value).startswith(message) and "\n" not in str(info.value), str(info.value)


def test_command_line_overrides_the_experiment(tmp_path):
    exp = registry(tmp_path, "executor: {kind: ray, workers: 2, max_retries: 1}").experiment("e")
    ex = resolve_executor(
        exp.executor, exp.executor_params, "experiments.e", None, {"workers": 1, "address": None}
    )
    assert isinstance(ex, RayExecutor) and ex.workers == 1 and ex.max_retries == 1
    # --executor local on a ray experiment runs in process, ignoring the ray options
    assert isinstance(
        resolve_executor(exp.executor, exp.executor_params, "experiments.e", "local"), InProcess
    )


def test_ray_options_on_the_local_executor_are_an_error(tmp_path):
    exp = registry(tmp_path).experiment("e")
    with pytest.raises(ConfigError, match=r"^--executor local\.address: unknown parameter"):
        resolve_executor("local", exp.executor_params, "experiments.e", None, {"address": "auto"})


def test_missing_ray_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(
        PluginError, match=r"Ray is not installed; pip install 'mergekit-ir\[ray\]'"
    ):
        resolve_executor("local", {}, "experiments.e", "ray")


def test_failure_messages_name_the_triplet():
    err = failure_error([JobFailure("t1", CheckpointError("ir/model.safetensors: not a file"))])
    assert (
        isinstance(err, CheckpointError)
        and str(err) == "triplet t1: ir/model.safetensors: not a file"
    )
    err = failure_error(
        [JobFailure("t2", RuntimeError("CUDA out of memory\nmore")), JobFailure("t3", ValueError())]
    )
    assert type(err) is MergeIRError
    assert str(err).startswith(
        "triplet t2: the job failed (RuntimeError: CUDA out of memory) (1 more"
    )


def test_stage_table_sums_workers_and_shows_wall():
    timer = StageTimer()
    timer.add({"scoring": 2.0, "loading": 1.0})
    timer.add({"scoring": 3.0})
    timer.wall = 4.0
    lines = timer.table().splitlines()
    assert lines[0] == "stage timings:"
    assert any(line.split()[:2] == ["scoring", "5.00s"] for line in lines)
    assert lines[-2].split() == ["total", "6.00s"] and lines[-1].split() == ["wall", "4.00s"]


def test_wire_splits_ship_only_the_retrieved_documents():
    from types import SimpleNamespace

    from mergekit_ir import Dataset, Document, wire_splits
    from mergekit_ir.experiments.runner import Split

    ds = Dataset(
        "toy",
        corpus={d: Document("", f"text {d}") for d in ("d1", "d2", "d3")},
        queries={"q1": "text"},
        qrels={"q1": {"d1": 1}},
    )
    fp = ds.fingerprint()
    split = Split(ds, {"q1": {"d1": 2.0, "d3": 1.0}}, "fs-key", "test")
    tests, devs = wire_splits(SimpleNamespace(tests={"toy": split}, devs={}))
    shipped = tests["toy"]
    assert sorted(shipped.dataset.corpus) == ["d1", "d3"] and devs == {}
    assert shipped.dataset.fingerprint() == fp  # cache keys do not change
    assert shipped.dataset.queries_fingerprint() == ds.queries_fingerprint()
    assert shipped.first_stage == split.first_stage and sorted(ds.corpus) == ["d1", "d2", "d3"]


def test_ray_actors_see_only_their_own_gpu():
    from mergekit_ir import WorkerSetup

    setup = WorkerSetup(None, "e", "/c", True, "cuda:3", None, None, None)
    assert RayExecutor(gpus_per_worker=1).placed(setup).device == "cuda"
    with pytest.raises(MergeIRError, match=r"^--device cuda:3 with the ray executor needs"):
        RayExecutor().placed(setup)
    cpu = WorkerSetup(None, "e", "/c", True, "auto", None, None, None)
    assert RayExecutor().placed(cpu) is cpu


# -- bounded waits: the address and the resources are checked before any work ----------------


@pytest.mark.parametrize(
    "address", ["not a url", "http://head:8265", "127.0.0.1:99999", "ray://head", "head", "a b:1"]
)
def test_malformed_address_is_one_line_before_ray_loads(monkeypatch, address):
    monkeypatch.setitem(sys.modules, "ray", None)  # had Ray been imported first: PluginError
    with pytest.raises(MergeIRError) as info:
        resolve_executor("local", {}, "experiments.e", "ray", {"address": address})
    msg = str(info.value)
    assert msg.startswith(f"executor 'ray': address={address!r} is not a Ray address; give auto")
    assert type(info.value) is MergeIRError and "\n" not in msg


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        (None, None), ("", None), ("  ", None), ("auto", "auto"), ("local", "local"),
        ("10.0.0.5:6379", "10.0.0.5:6379"), ("head-0.svc:6379", "head-0.svc:6379"),
        ("ray://head:10001", "ray://head:10001"), ("[::1]:6379", "[::1]:6379"),
    ],
)  # fmt: skip
def test_well_formed_addresses_are_kept(given, kept):
    assert check_address(given) == kept


def fake_ray(nodes=(), initialized=False):
    """A stand-in for the ``ray`` module: records init calls, reports ``nodes``."""
    calls: list[dict] = []

    def init(**kw):
        calls.append(kw)

    return SimpleNamespace(
        is_initialized=lambda: initialized or bool(calls),
        init=init,
        shutdown=lambda: None,
        nodes=lambda: [dict(n) for n in nodes],
        cluster_resources=lambda: {},
        calls=calls,
    )


def node(cpu: float, gpu: float = 0.0, alive: bool = True) -> dict:
    res = {"CPU": cpu, "memory": 1e9} | ({"GPU": gpu} if gpu else {})
    return {"Alive": alive, "Resources": res}


@pytest.mark.parametrize("address", ["127.0.0.1:1", "ray://127.0.0.1:1"])
def test_unreachable_address_fails_at_once_without_ray_init(monkeypatch, address):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray = fake_ray([node(2)])
    start = time.monotonic()
    with pytest.raises(MergeIRError) as info:
        RayExecutor(address=address).connect(ray)
    assert time.monotonic() - start < 1.0 and ray.calls == []  # ray.init was never called
    msg = str(info.value)
    assert (
        msg.startswith(f"executor 'ray': address={address}: cannot connect (") and "\n" not in msg
    )
    assert "leave address out to start a local cluster" in msg


def test_ray_address_from_the_environment_is_checked_and_named(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    with pytest.raises(MergeIRError, match=r"^executor 'ray': \$RAY_ADDRESS=127\.0\.0\.1:1: "):
        RayExecutor().connect(fake_ray([node(2)]))
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265")
    with pytest.raises(MergeIRError, match=r"^executor 'ray': \$RAY_ADDRESS='http://head:8265' is"):
        RayExecutor(address="auto").connect(fake_ray([node(2)]))


def test_a_stale_record_of_a_ray_start_cluster_is_named(monkeypatch):
    """No address: Ray joins the cluster its record says `ray start` last started here; if
    that cluster is gone, Ray retried it for minutes. Now one line saying what to do."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray = fake_ray([node(2)])
    record = {None: "127.0.0.1:1", "auto": "127.0.0.1:1", "127.0.0.1:1": "127.0.0.1:1"}
    ray._private = SimpleNamespace(
        services=SimpleNamespace(canonicalize_bootstrap_address=lambda a: record[a])
    )
    with pytest.raises(MergeIRError) as info:
        RayExecutor().connect(ray)
    assert str(info.value).startswith(
        "executor 'ray': no address given (Ray dials 127.0.0.1:1): cannot connect ("
    )
    assert "run `ray stop` to clear the record, or give address=local" in str(info.value)
    assert ray.calls == []


def test_a_silent_port_is_given_up_after_connect_timeout():
    with socket.socket() as listener:  # accepts connections, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        target = split_address(f"127.0.0.1:{listener.getsockname()[1]}")
        start = time.monotonic()
        with pytest.raises(MergeIRError, match=r"answers, but not as a Ray GCS within 0\.5s"):
            probe(target, 0.5)
        assert 0.4 < time.monotonic() - start < 1.0


def test_a_grpc_server_that_is_not_ray_is_named():
    from concurrent import futures

    import grpc

    server = grpc.server(futures.ThreadPoolExecutor(1))  # no services: every call UNIMPLEMENTED
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with pytest.raises(MergeIRError, match=r"not as a Ray GCS; a Ray Client server .* ray://"):
            probe(split_address(f"127.0.0.1:{port}"), 2)
        with pytest.raises(MergeIRError, match=r"not as a Ray Client server; the GCS .* without"):
            probe(split_address(f"ray://127.0.0.1:{port}"), 2)
    finally:
        server.stop(None)


@pytest.mark.parametrize(
    ("options", "nodes", "message"),
    [
        ({"cpus_per_worker": 64}, [node(2)],
         "executor 'ray': cpus_per_worker=64 but the largest node has 2 CPUs; lower cpus_per_worker"),
        ({"gpus_per_worker": 1}, [node(2)],
         "executor 'ray': gpus_per_worker=1 but the cluster has no GPUs; use gpus_per_worker=0"),
        # 4 GPUs in the cluster, but an actor runs on one node
        ({"gpus_per_worker": 4}, [node(8, 2), node(8, 2)],
         "executor 'ray': gpus_per_worker=4 but the largest node has 2 GPUs; lower gpus_per_worker"),
        ({"cpus_per_worker": 8, "gpus_per_worker": 1}, [node(16), node(4, 1)],
         "executor 'ray': cpus_per_worker=8 with gpus_per_worker=1 fits no single node "
         "(nodes: 16 CPU + 0 GPU, 4 CPU + 1 GPU)"),
        ({"cpus_per_worker": 64}, [node(64, alive=False), node(2)],
         "executor 'ray': cpus_per_worker=64 but the largest node has 2 CPUs"),
    ],
)  # fmt: skip
def test_resources_no_node_has_are_one_line(options, nodes, message):
    with pytest.raises(MergeIRError) as info:
        RayExecutor(**options).connect(fake_ray(nodes, initialized=True))
    msg = str(info.value)
    assert msg.startswith(message) and "\n" not in msg, msg
    assert msg.endswith(
        "on an autoscaling cluster with larger node types, set check_resources=false"
    )
    # the opt-out for a cluster that adds nodes on demand
    RayExecutor(**options, check_resources=False).connect(fake_ray(nodes, initialized=True))


def test_gpus_above_one_must_be_whole():
    with pytest.raises(MergeIRError, match=r"^executor 'ray': gpus_per_worker=1\.5: above 1"):
        RayExecutor(gpus_per_worker=1.5)
    assert RayExecutor(gpus_per_worker=2).gpus_per_worker == 2


def test_resources_are_checked_before_any_task_or_actor(monkeypatch):
    def never():
        raise AssertionError("a task or actor was created")

    ray = fake_ray([node(2)], initialized=True)
    monkeypatch.setattr(ray_cluster, "import_ray", lambda: ray)
    monkeypatch.setattr(ray_cluster, "remote_first_stage", never)
    monkeypatch.setattr(ray_cluster, "remote_worker", never)
    setup = SimpleNamespace(device="auto")
    stages = SimpleNamespace(jobs=(("toy", "test"),), backend="bm25s", worker_setup=lambda: setup)
    with pytest.raises(MergeIRError, match=r"^executor 'ray': cpus_per_worker=64 but the larg"):
        RayExecutor(cpus_per_worker=64).first_stages(stages)
    triplets = SimpleNamespace(
        triplets=("t1",), worker_setup=lambda: setup, wire_splits=never, echo=print, progress=False
    )
    with pytest.raises(MergeIRError, match=r"^executor 'ray': gpus_per_worker=1 but the clus"):
        list(RayExecutor(gpus_per_worker=1).run_triplets(triplets))


def test_workers_are_counted_per_node():
    # two nodes of 3 CPUs hold two 2-CPU actors, not 6 / 2 = 3 (the third would never start)
    ray = fake_ray([node(3), node(3)], initialized=True)
    assert RayExecutor(cpus_per_worker=2).slots(ray, 10) == 2
    assert RayExecutor(cpus_per_worker=0.5).slots(ray, 10) == 10  # at most one per job
    said: list[str] = []
    assert RayExecutor(cpus_per_worker=2, workers=4).slots(ray, 10, said.append) == 2
    assert said == ["ray: workers=4 but the nodes hold 2 worker(s) of 2 CPU and 0 GPU; starting 2"]
    assert RayExecutor(cpus_per_worker=2, workers=4, check_resources=False).slots(ray, 10) == 4
