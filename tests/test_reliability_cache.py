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


def test_alignment_copy_is_part_of_the_merged_run_key(tmp_path):
    """Two triplets that differ only in `alignment.copy` must not share Θ'(α) cache entries:
    copying every tensor from ΘT makes Θ'(α=1) score exactly as ΘT."""
    import json

    from click.testing import CliRunner

    from mergekit_ir.cli import main

    common = (
        "    scorer: {kind: bi-encoder, pooling: mean, similarity: cosine}\n"
        "    pretrained: 'quickstart:pretrained'\n    domain: 'quickstart:domain'\n"
        "    ir: 'quickstart:ir'\n"
    )
    reg = tmp_path / "registry.yaml"
    reg.write_text(
        "datasets:\n  toy: {beir: 'quickstart:toy', test: test}\n"
        f"triplets:\n  plain:\n{common}  all-copied:\n{common}"
        "    alignment: {copy: ['.']}\n"
        "experiments:\n  e:\n    triplets: [plain, all-copied]\n    datasets: [toy]\n"
        "    merge: {method: task_arithmetic, alpha: [1.0]}\n    metrics: [NDCG@10]\n"
    )
    res = CliRunner().invoke(
        main,
        ["run", "e", "--registry", str(reg), "--out", str(tmp_path / "o"),
         "--cache-dir", str(tmp_path / "c"), "-q"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "o" / "results.json").read_text())

    def ndcg(section, key):
        row = next(r for r in section["rows"] if r["key"] == key)
        return row["cells"]["toy"]["NDCG@10"]["per_query"]

    plain, copied = out["sections"]
    assert ndcg(copied, "merged@1") == ndcg(copied, "ir")  # Θ' = ΘT: every tensor copied
    assert ndcg(plain, "merged@1") != ndcg(copied, "merged@1")  # not the other triplet's entry
