"""Executor plugins without a cluster: config validation, option precedence, messages."""

from __future__ import annotations

import sys

import pytest

from mergekit_ir import CheckpointError, ConfigError, MergeIRError, PluginError
from mergekit_ir.experiments.jobs import resolve_executor
from mergekit_ir.experiments.registry import load_registry
from mergekit_ir.experiments.runner import StageTimer
from mergekit_ir.plugin_host import catalog
from mergekit_ir_plugins.executors.local import InProcess
from mergekit_ir_plugins.executors.ray_cluster import JobFailure, RayExecutor, failure_error

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
