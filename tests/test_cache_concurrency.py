"""One cache, many writers: processes writing the same entry never corrupt it.

Workers of a distributed run (``--executor ray``) may compute the same model run at the
same time into a cache on shared storage. Every write is a temporary file renamed over
the entry, so the last writer wins with identical content and a reader sees the whole
previous entry, the whole new one, or none — never a partial file.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time

import pytest

from mergekit_ir.storage.cache import Cache, cache_key

pytestmark = pytest.mark.slow

KEY = cache_key("model-run", "concurrency-test")


def big_run(seed: int) -> dict[str, dict[str, float]]:
    """~300 kB of JSON: big enough that a non-atomic write would be seen half done."""
    return {
        f"q{q}": {f"d{d}": (q * 131 + d * 7 + seed) / 997.0 for d in range(100)} for q in range(300)
    }


def writer(root: str, n: int, start: mp.Event) -> None:
    start.wait()
    cache = Cache(root)
    run = big_run(0)  # every writer computes the same entry: identical content
    for _ in range(n):
        cache.save_run("model", KEY, run)


def reader(root: str, stop: mp.Event, start: mp.Event, out: mp.Queue) -> None:
    start.wait()
    path = Cache(root)._path("model", KEY)
    seen, bad = 0, 0
    expected = big_run(0)
    while not stop.is_set():
        try:
            text = path.read_text()
        except FileNotFoundError:
            continue
        try:
            ok = json.loads(text) == expected
        except ValueError:
            ok = False
        seen += 1
        bad += not ok
    out.put((seen, bad))


def test_concurrent_writers_never_leave_a_partial_entry(tmp_path):
    ctx = mp.get_context("fork")  # the workers only need this module; fork starts in ms
    start, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
    writers = [ctx.Process(target=writer, args=(str(tmp_path), 25, start)) for _ in range(3)]
    readers = [ctx.Process(target=reader, args=(str(tmp_path), stop, start, out)) for _ in range(2)]
    for p in writers + readers:
        p.start()
    start.set()
    deadline = time.monotonic() + 60
    for p in writers:
        p.join(max(1.0, deadline - time.monotonic()))
        assert p.exitcode == 0
    stop.set()
    results = [out.get(timeout=30) for _ in readers]
    for p in readers:
        p.join(10)
    assert sum(seen for seen, _ in results) > 0  # the readers did read while writers wrote
    assert all(bad == 0 for _, bad in results), results
    folder = tmp_path / "runs" / "model"
    assert sorted(os.listdir(folder)) == [f"{KEY}.json"]  # no temporaries left behind
    cache = Cache(tmp_path)
    assert cache.load_run("model", KEY) == big_run(0) and cache.hits() == 1


def test_a_killed_writer_leaves_the_previous_entry(tmp_path):
    """A writer killed mid-write (a worker lost with its node) leaves the old entry whole."""
    import signal

    cache = Cache(tmp_path)
    cache.save_run("model", KEY, big_run(1))
    ctx = mp.get_context("fork")
    start = ctx.Event()
    p = ctx.Process(target=writer, args=(str(tmp_path), 10_000, start))
    p.start()
    start.set()
    time.sleep(0.3)
    os.kill(p.pid, signal.SIGKILL)
    p.join(10)
    run = Cache(tmp_path).load_run("model", KEY)
    assert run in (big_run(0), big_run(1))  # one whole entry, never a mix or a fragment
