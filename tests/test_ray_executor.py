"""`--executor ray` on a real local Ray cluster gives exactly the local numbers.

One cluster (``ray.init(num_cpus=2)``) is shared by the module: start-up costs seconds.
The quickstart and a two-triplet experiment run through both executors into separate
caches (so the Ray workers really compute), and ``results.json`` (timings and hosts
aside), the TREC runs and the reports must be identical. A worker killed mid-job is
retried; a triplet whose checkpoint is broken fails the run in one line naming it, with
the other triplet's runs left in the cache. Requests no node can hold and addresses nothing
answers at fail in one line within a bound (run as subprocesses, so a hang fails the test
instead of hanging it).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from mergekit_ir.cli import main

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")
pytestmark = pytest.mark.slow

BUNDLED = str(Path(__file__).resolve().parents[1] / "registry.yaml")
TWO = """
datasets:
  quickstart-toy: {beir: "quickstart:toy", test: test, dev: dev}
triplets:
  tiny-cos:
    scorer: {kind: bi-encoder, pooling: mean, similarity: cosine}
    pretrained: "quickstart:pretrained"
    domain: "quickstart:domain"
    ir: "quickstart:ir"
  tiny-dot:
    scorer: {kind: bi-encoder, pooling: cls, similarity: dot}
    pretrained: "quickstart:pretrained"
    domain: "quickstart:domain"
    ir: "quickstart:ir"
  broken:
    scorer: {kind: bi-encoder, pooling: mean, similarity: cosine}
    pretrained: "quickstart:pretrained"
    domain: "quickstart:domain"
    ir: broken-ir
experiments:
  two:
    triplets: [tiny-cos, tiny-dot]
    datasets: [quickstart-toy]
    merge: {method: task_arithmetic, alpha: [0.5, 1.0]}
    metrics: [NDCG@10, MAP@100]
  two-on-ray:
    triplets: [tiny-cos, tiny-dot]
    datasets: [quickstart-toy]
    merge: {method: task_arithmetic, alpha: [0.5, 1.0]}
    metrics: [NDCG@10, MAP@100]
    executor: {kind: ray, workers: 2, max_retries: 2}
  two-no-retry:
    triplets: [tiny-cos, tiny-dot]
    datasets: [quickstart-toy]
    merge: {method: task_arithmetic, alpha: [0.5, 1.0]}
    metrics: [NDCG@10, MAP@100]
    executor: {kind: ray, workers: 2, max_retries: 0}
  cos-only:
    triplets: [tiny-cos]
    datasets: [quickstart-toy]
    merge: {method: task_arithmetic, alpha: [0.5, 1.0]}
    metrics: [NDCG@10, MAP@100]
  with-broken:
    triplets: [tiny-cos, broken]
    datasets: [quickstart-toy]
    merge: {method: task_arithmetic, alpha: [0.5, 1.0]}
    metrics: [NDCG@10, MAP@100]
  greedy:
    triplets: [tiny-cos]
    datasets: [quickstart-toy]
    merge: {method: task_arithmetic, alpha: [0.5, 1.0]}
    executor: {kind: ray, cpus_per_worker: 64}
"""


@pytest.fixture(scope="module")
def cluster():
    # address="local": a new cluster even if this machine has a `ray start` record or $RAY_ADDRESS
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("reg")
    bad = root / "broken-ir"
    bad.mkdir()
    (bad / "config.json").write_text('{"model_type": "bert"}')
    (bad / "model.safetensors").write_bytes(b"not a safetensors file")
    path = root / "registry.yaml"
    path.write_text(TWO)
    return str(path)


def invoke(*args: str):
    return CliRunner().invoke(main, ["run", *args, "-q"], catch_exceptions=False)


def comparable(out: Path) -> dict:
    """Everything a run reports except where and how long it ran."""
    res = json.loads((out / "results.json").read_text())
    res.pop("manifest")
    runs = {p.relative_to(out).as_posix(): p.read_bytes() for p in (out / "runs").rglob("*.trec")}
    return {"results": res, "runs": runs, "report": (out / "results.md").read_text()}


@pytest.fixture(scope="module")
def local_two(registry, tmp_path_factory):
    root = tmp_path_factory.mktemp("local2")
    res = invoke(
        "two", "--registry", registry, "--out", str(root / "out"), "--cache-dir", str(root / "c")
    )
    assert res.exit_code == 0, res.output
    return comparable(root / "out")


def test_quickstart_on_ray_equals_local(cluster, quickstart_run, tmp_path):
    out = tmp_path / "out"
    res = invoke(
        "--registry", BUNDLED, "--out", str(out), "--cache-dir", str(tmp_path / "c"),
        "--executor", "ray",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "ray: 1 triplet job(s) on 1 worker(s)" in res.output
    assert "ray: 2 first-stage job(s) (bm25s)" in res.output  # test and dev, as Ray tasks
    assert "wall" in res.output and "cache: 0 hits" in res.output
    assert comparable(out) == comparable(quickstart_run[0] / "out")  # the local run's


def kill_first_worker_mid_job(killed: list[int], stop: threading.Event) -> None:
    """SIGKILL the first Ray worker seen running a triplet job (its process title says so)."""
    while not stop.is_set():
        for p in psutil.process_iter(["pid", "cmdline"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if "TripletWorker.run" in cmd:
                os.kill(p.info["pid"], signal.SIGKILL)
                killed.append(p.info["pid"])
                return
        time.sleep(0.02)


def test_killed_worker_is_retried_with_identical_numbers(cluster, registry, local_two, tmp_path):
    """Two triplets on two workers (the registry's executor block), one worker SIGKILLed
    mid-job: Ray restarts it, and the report is the local run's, in registry order."""
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=kill_first_worker_mid_job, args=(killed, stop), daemon=True)
    killer.start()
    try:
        res = invoke(
            "two-on-ray", "--registry", registry, "--out", str(tmp_path / "out"),
            "--cache-dir", str(tmp_path / "c"),
        )  # fmt: skip
    finally:
        stop.set()
        killer.join(5)
    assert killed, "no worker was seen running a job"
    assert res.exit_code == 0, res.output
    assert "ray: 2 triplet job(s) on 2 worker(s)" in res.output
    # each worker's echo comes back in registry order, and its stage times are summed
    assert res.output.index("triplet tiny-cos") < res.output.index("triplet tiny-dot")
    ray_result = comparable(tmp_path / "out")
    # the same experiment under another name (it only adds the executor block)
    ray_result["results"]["experiment"] = "two"
    ray_result["report"] = ray_result["report"].replace("Results: two-on-ray", "Results: two")
    assert ray_result == local_two


def test_a_worker_dying_beyond_max_retries_fails_in_one_line(cluster, registry, tmp_path):
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=kill_first_worker_mid_job, args=(killed, stop), daemon=True)
    killer.start()
    try:
        res = CliRunner().invoke(
            main,
            ["run", "two-no-retry", "--registry", registry, "--out", str(tmp_path / "out"),
             "--cache-dir", str(tmp_path / "c"), "-q"],
        )  # fmt: skip
    finally:
        stop.set()
        killer.join(5)
    assert killed and res.exit_code == 2, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "a Ray worker died more than max_retries=0 times" in errors[0]
    assert errors[0].startswith("error: triplet job(s) tiny-")
    assert not (tmp_path / "out" / "results.json").exists()


def test_broken_triplet_fails_in_one_line_and_keeps_the_others_cached(cluster, registry, tmp_path):
    cache = str(tmp_path / "c")
    res = CliRunner().invoke(
        main,
        ["run", "with-broken", "--registry", registry, "--out", str(tmp_path / "o1"),
         "--cache-dir", cache, "--executor", "ray", "--workers", "2", "-q"],
    )  # fmt: skip
    assert res.exit_code == 2
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: triplet broken: "), res.output
    assert "broken-ir" in errors[0] and "Traceback" not in res.output
    assert not (tmp_path / "o1" / "results.json").exists()
    # the healthy triplet's runs are cached: a rerun without the broken one computes nothing
    res = invoke(
        "cos-only", "--registry", registry, "--out", str(tmp_path / "o2"), "--cache-dir", cache
    )
    assert res.exit_code == 0, res.output
    assert ", 0 misses" in res.output, res.output


def test_ray_executor_leaves_no_actors_behind(cluster):
    def workers() -> list[int]:
        return [
            p.pid
            for p in psutil.process_iter(["cmdline"])
            if "TripletWorker" in " ".join(p.info["cmdline"] or [])
        ]

    deadline = time.monotonic() + 10
    while workers() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert workers() == []


def test_ctrl_c_shuts_the_cluster_connection_down(cluster, registry, tmp_path):
    """SIGINT during a job: the driver kills its actors, disconnects and exits (no hang)."""
    import subprocess

    cmd = [
        sys.executable, "-m", "mergekit_ir.cli", "run", "two", "--registry", registry,
        "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "c"),
        "--executor", "ray", "--workers", "2", "-q",
    ]  # fmt: skip
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        # a test run started in the background (`cmd &`) inherits SIGINT ignored, and Python
        # then never raises KeyboardInterrupt: give the driver the default a user's shell gives
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 180  # worker start-up is slow on a loaded machine
        while time.monotonic() < deadline and not running_jobs(first_stage=True):
            time.sleep(0.05)
        assert running_jobs(first_stage=True), "no job started"
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=120)  # bounded: a hang fails; a loaded CI box is slow
    finally:
        proc.kill()
    assert proc.returncode != 0 and b"Aborted!" in output, output.decode()
    assert not (tmp_path / "out" / "results.json").exists()
    deadline = time.monotonic() + 10
    while running_jobs() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not running_jobs(first_stage=True)  # the actors and tasks went with the driver


def running_jobs(first_stage: bool = False) -> list[int]:
    """Ray worker processes running a triplet job (or, with ``first_stage``, a first-stage
    task: SIGINT must shut down cleanly in either)."""
    marks = ("TripletWorker.run", "run_first_stage_job") if first_stage else ("TripletWorker.run",)
    return [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if any(m in " ".join(p.info["cmdline"] or []) for m in marks)
    ]


def run_all(commands: dict[str, list[str]], env: dict[str, str], limit: float) -> dict:
    """Run each command (``python ARGS``) at once; name -> (exit code, output, seconds). A
    command still going after ``limit`` seconds is killed and fails the test."""
    import subprocess

    procs = {
        name: (
            time.monotonic(),
            subprocess.Popen(
                [sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
            ),
        )
        for name, args in commands.items()
    }
    out = {}
    try:
        for name, (start, proc) in procs.items():
            try:
                output, _ = proc.communicate(timeout=max(1.0, start + limit - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"{name}: still waiting after {limit:g}s")
            out[name] = (proc.returncode, output.decode(), time.monotonic() - start)
    finally:
        for _, proc in procs.values():
            proc.kill()
    return out


def one_error(output: str) -> str:
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in output, output
    return errors[0]


#: Runs ``mergeir`` once per JSON argument list in one driver process (one start-up, not one
#: per case) and prints each exit code and output between markers.
EACH = """
import json, sys
from click.testing import CliRunner
from mergekit_ir.cli import main
for args in json.loads(sys.argv[1]):
    res = CliRunner().invoke(main, args)
    print(f"=== exit {res.exit_code}")
    print(res.output)
"""


def run_each(cases: dict[str, list[str]], env: dict[str, str], limit: float) -> dict:
    """name -> (exit code, output) of ``mergeir ARGS`` for each case, run in order in one
    child process bounded by ``limit`` seconds (a hang fails the test, not the suite)."""
    code, output, _ = run_all({"each": ["-c", EACH, json.dumps(list(cases.values()))]}, env, limit)[
        "each"
    ]
    parts = output.split("=== exit ")[1:]
    assert code == 0 and len(parts) == len(cases), output
    return {
        name: (int(part.split("\n", 1)[0]), part.split("\n", 1)[1])
        for name, part in zip(cases, parts, strict=True)
    }


def test_resources_no_node_has_fail_in_one_line_at_once(cluster, registry, tmp_path):
    """On the 2-CPU, GPU-less cluster: 64 CPUs per worker (flag and registry block) and one
    GPU per worker used to wait forever; now one line, before any task or actor."""
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}

    def run(name: str, *args: str) -> list[str]:
        out = ["--out", str(tmp_path / name / "out"), "--cache-dir", str(tmp_path / name / "c")]
        return ["run", *args, *out, "-q"]

    param = ["--executor", "ray", "--executor-param"]
    res = run_each(
        {
            "cpus flag": run("a", "--registry", BUNDLED, *param, "cpus_per_worker=64"),
            "cpus block": run("b", "greedy", "--registry", registry),
            "gpus flag": run("c", "--registry", BUNDLED, *param, "gpus_per_worker=1"),
        },
        env,
        limit=150,  # start-up of a driver on a loaded machine; the check itself is instant
    )
    for name in ("cpus flag", "cpus block"):
        code, output = res[name]
        assert code == 2 and one_error(output).startswith(
            "error: executor 'ray': cpus_per_worker=64 but the largest node has 2 CPUs; "
            "lower cpus_per_worker"
        ), output
        assert "first-stage job(s)" not in output  # no task was started
    code, output = res["gpus flag"]
    assert code == 2 and one_error(output).startswith(
        "error: executor 'ray': gpus_per_worker=1 but the cluster has no GPUs"
    ), output
    assert not list(tmp_path.glob("*/out/results.json"))


#: Times the connection step for each ``(address, connect_timeout)`` in one driver process.
CONNECT = """
import json, sys, time, ray
from mergekit_ir import MergeIRError
from mergekit_ir_plugins.executors.ray_cluster import RayExecutor
for address, timeout in json.loads(sys.argv[1]):
    ex = RayExecutor(address=address, connect_timeout=timeout)
    start = time.monotonic()
    try:
        ex.connect(ray)
        print("connected")
    except MergeIRError as exc:
        print(exc)
    print(f"took {time.monotonic() - start:.2f}")
"""


def test_unreachable_addresses_fail_in_one_line_within_the_bound(tmp_path):
    """Nothing at 127.0.0.1:1 (GCS and Ray Client forms: Ray waited 33 s to minutes), and a
    local port that accepts but never answers (bounded by connect_timeout=2): the connection
    step is timed inside a driver process, and the CLI gives one line. Only local addresses
    are touched."""
    import socket

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # Ray dials the node's IP for 127.0.0.1 (a cluster's view of this machine); with this,
    # its loopback, so the test touches 127.0.0.1 only
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        steps = [["127.0.0.1:1", 10], ["ray://127.0.0.1:1", 10], [f"127.0.0.1:{port}", 2]]
        out = ["--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "c")]
        cli = ["run", "--registry", BUNDLED, *out, "-q", "--executor", "ray"]
        res = run_all(
            {
                "connect": ["-c", CONNECT, json.dumps(steps)],
                "cli": [
                    "-c",
                    EACH,
                    json.dumps([[*cli, "--executor-param", "address=127.0.0.1:1"]]),
                ],
            },
            env,
            limit=90,
        )

    code, output, _ = res["connect"]
    lines = output.strip().splitlines()
    assert code == 0 and len(lines) == 6 and lines[1::2][-1].startswith("took "), output
    took = {address: (line, float(t.split()[1])) for (address, _), line, t in
            zip(steps, lines[0::2], lines[1::2], strict=True)}  # fmt: skip
    for address in ("127.0.0.1:1", "ray://127.0.0.1:1"):
        line, seconds = took[address]
        assert line.startswith(f"executor 'ray': address={address}") and seconds < 1.0, took
        assert "cannot connect (Connection refused)" in line
    line, seconds = took[f"127.0.0.1:{port}"]
    assert line.startswith(f"executor 'ray': address=127.0.0.1:{port}") and 1.5 < seconds < 4, took
    assert "the port answers, but not as a Ray GCS within 2s (connect_timeout)" in line
    code, output, _ = res["cli"]
    line = one_error(output)
    assert code == 0 and "=== exit 2" in output, output
    assert line.startswith("error: executor 'ray': address=127.0.0.1:1"), output
