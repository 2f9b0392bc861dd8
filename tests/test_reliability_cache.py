"""Broken cache entries are recomputed and replaced, never a traceback."""

from __future__ import annotations

import pytest

from mergekit_ir.storage.cache import Cache

RUN = {"q1": {"d1": 1.5, "d2": -0.25}}


@pytest.mark.parametrize(
    "damage", ["[]", "{}x", '{"q1": [1, 2]}', '{"q1": {"d1": "high"}}', "42", "folder", "\xff"]
)
def test_broken_entry_is_a_miss_then_replaced(tmp_path, damage):
    cache = Cache(tmp_path)
    path = cache._path("model", "k")
    path.parent.mkdir(parents=True)
    if damage == "folder":
        path.mkdir()
        (path / "x").write_text("1")
    else:
        path.write_text(damage, encoding="latin-1")
    assert cache.load_run("model", "k") is None and cache.misses() == 1
    cache.save_run("model", "k", RUN)
    assert Cache(tmp_path).load_run("model", "k") == RUN


def test_empty_run_is_a_valid_entry(tmp_path):
    cache = Cache(tmp_path)
    cache.save_run("model", "k", {})
    assert cache.load_run("model", "k") == {} and cache.hits() == 1
