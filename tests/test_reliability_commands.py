"""Every command keeps the guarantees (issue: hostile and careless inputs to the newer commands).

Each class of the review has a test here: writes where they do not belong and data loss, work
thrown away, tracebacks for user errors, silent wrong outputs. The shape is always the same:
one ``error:`` line, exit code 2, nothing written outside the output, no partial output.
"""

from __future__ import annotations

import json
import os
import string
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mergekit_ir.cli import main
from mergekit_ir.errors import CheckpointError, ConfigError
from mergekit_ir.storage.output_folder import (
    OutputError,
    OutputKind,
    check_free_space,
    check_output,
    check_path_names,
)


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def one_line_error(res, pattern: str) -> str:
    import re

    assert res.exit_code == 2, res.output
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


KIND = OutputKind(what="it", marker="ours.json", earlier="test output")


# -- 1. data loss and writes where they do not belong ---------------------------------------------
def test_policy_never_replaces_a_folder_that_is_not_ours(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    with pytest.raises(OutputError, match=r"not an earlier test output \(no ours.json\)"):
        check_output(out, KIND, overwrite=True)
    assert (out / "thesis.tex").read_text() == "years of work"
    (out / "ours.json").write_text("{}")
    assert check_output(out, KIND, overwrite=True) == out  # our own earlier output: replaceable


def test_policy_follows_symlinks_to_inputs(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (tmp_path / "link").symlink_to(base)
    with pytest.raises(OutputError, match="is the input folder of --base"):
        check_output(tmp_path / "link", KIND, inputs=[("--base", base)], overwrite=True)
    with pytest.raises(OutputError, match="is inside the input folder of --base"):
        check_output(tmp_path / "link" / "sub", KIND, inputs=[("--base", base)])
    with pytest.raises(OutputError, match="contains the input folder of --base"):
        check_output(tmp_path, KIND, inputs=[("--base", base)], overwrite=True)


def test_policy_names_too_long_and_paths_past_path_max(tmp_path):
    with pytest.raises(OutputError, match=r"is 300 bytes; file systems allow 255"):
        check_path_names(tmp_path / ("x" * 300))
    deep = tmp_path.joinpath(*(["d" * 200] * 25))
    with pytest.raises(OutputError, match="choose a shorter path"):
        check_path_names(deep)


def test_policy_checks_free_space_against_the_bytes_to_write(tmp_path):
    with pytest.raises(OutputError, match=r"needs about .* free; free space"):
        check_free_space(tmp_path / "out", 10**18)
    check_free_space(tmp_path / "out", 10**3)


def test_merge_output_inside_an_input_refused_before_work(tiny_triplet, tmp_path):
    before = snapshot(tiny_triplet["ir"])
    res = invoke(
        "merge", "--ir", tiny_triplet["ir"], "--pretrained", tiny_triplet["pretrained"],
        "--domain", tiny_triplet["domain"], "--out", tiny_triplet["ir"] / "merged", "-q",
    )  # fmt: skip
    one_line_error(res, "is inside the input folder of ΘT")
    assert snapshot(tiny_triplet["ir"]) == before


@pytest.mark.slow
def test_run_output_equal_to_an_input_folder_refused(tmp_path):
    res = invoke("run", "quickstart", "--out", tmp_path / "runs", "--cache-dir", tmp_path / "c")
    assert res.exit_code == 0, res.output  # the quickstart builds its inputs in the cache
    res = invoke(
        "run", "quickstart", "--out", tmp_path / "c" / "quickstart-v1",
        "--cache-dir", tmp_path / "c",
    )  # fmt: skip
    one_line_error(res, r"--out .*quickstart-v1: is inside the input folder of --cache-dir")


@pytest.mark.parametrize("name", ["../escaped", "/abs/name", "a/b", "base", ""])
def test_residual_names_never_become_paths(tiny_triplet, tmp_path, name):
    work = tmp_path / "work"
    work.mkdir()
    res = invoke(
        "task-vector", "--pretrained", tiny_triplet["pretrained"],
        "--domain", f"{name}={tiny_triplet['domain']}", "--domain", f"b={tiny_triplet['domain']}",
        "--residual", "--out", work / "rtvq",
    )  # fmt: skip
    one_line_error(res, r"--domain '.*': (name .* is not allowed|'base' is the RTVQ base)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]
    assert not any(work.iterdir())


def test_task_vector_into_an_unrelated_folder_keeps_its_files(tiny_triplet, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    res = invoke(
        "task-vector", "--pretrained", tiny_triplet["pretrained"], "--domain",
        tiny_triplet["domain"], "--out", out, "--overwrite",
    )  # fmt: skip
    one_line_error(res, r"not an earlier saved task vector")
    assert snapshot(out) == {"notes.txt": b"keep"}


def test_rerank_out_refused_before_any_scoring(tmp_path, monkeypatch):
    out = tmp_path / "runs"
    out.mkdir()
    (out / "paper.pdf").write_bytes(b"%PDF")
    import mergekit_ir.experiments.rerank_model as rerank_model

    def never(*_a, **_k):
        raise AssertionError("scored before the output was checked")

    monkeypatch.setattr(rerank_model, "rerank_model", never)
    res = invoke(
        "rerank", tmp_path / "model", "--scorer", "bi-encoder", "--dataset", "x", "--out", out
    )
    one_line_error(
        res, r"--out .*runs: exists and is not the output of an earlier `mergeir rerank`"
    )
    assert snapshot(out) == {"paper.pdf": b"%PDF"}


def test_from_run_never_creates_the_cache_folder_its_results_json_names(tmp_path):
    from mergekit_ir.api.from_run import _recorded_cache

    target = tmp_path / "etc-like"
    assert _recorded_cache(str(target)) is None and not target.exists()
    assert _recorded_cache(None) is None and _recorded_cache(["x"]) is None
    (target / "runs").mkdir(parents=True)
    assert _recorded_cache(str(target)) == target


# -- 2. silent wrong outputs ----------------------------------------------------------------------
def test_a_saved_tau_beyond_fp16_is_refused_not_stored_as_inf(tmp_path):
    from mergekit_ir.merging.quantized_store import QuantSpec, save_quantized
    from mergekit_ir.merging.task_vector import TaskVector

    class Dense:
        def keys(self):
            return ["bias"]

        def shape(self, _k):
            return (4,)

        def get(self, _k, rows=None):
            return torch.tensor([1.0, 70000.0, -2.0, 0.5])

        def describe(self):
            return "τ"

    tv = TaskVector([(1.0, Dense())])
    with pytest.raises(CheckpointError, match=r"beyond the fp16 range"):
        save_quantized(tv, tmp_path / "tau", QuantSpec(bits=4))
    assert not (tmp_path / "tau").exists()


def test_nan_is_named_as_nan_when_quantizing():
    from mergekit_ir.merging.quantize import quantize

    with pytest.raises(ValueError, match="NaN/Inf values cannot be quantized"):
        quantize(torch.tensor([[1.0, float("nan")]]), 4, 2)


def test_from_run_refuses_a_checkpoint_changed_since_the_run(tmp_path):
    from mergekit_ir.api.from_run import RunSelection, check_unchanged
    from mergekit_ir.experiments.registry import load_registry
    from mergekit_ir.references.tiny_models import save_bert, word_tokenizer

    folder = tmp_path / "ir"
    save_bert(folder, word_tokenizer(["a", "b"]), seed=1)
    reg_path = tmp_path / "r.yaml"
    reg_path.write_text(
        "datasets: {}\ntriplets:\n  t: {scorer: {kind: bi-encoder}, pretrained: ir, "
        "domain: ir, ir: ir}\nexperiments: {}\n"
    )
    reg = load_registry(reg_path)
    sel = RunSelection(
        tmp_path, "e", reg_path, None, "t", ("d",), "task_arithmetic",
        checkpoints={"t.ir": {"fingerprint": "recorded-at-run-time"}},
    )  # fmt: skip
    with pytest.raises(
        ConfigError, match=r"triplets\.t\.ir .* is not the checkpoint the run scored"
    ):
        check_unchanged(sel, reg, tmp_path / "cache")


# -- 3/5. tracebacks for user errors: one line, before the work -----------------------------------
@pytest.mark.parametrize(
    "content", ["[]", "null", '{"sections": 5}', '{"sections": [{"rows": "x"}]}', "3"]
)
def test_report_on_a_results_json_of_the_wrong_shape(tmp_path, content):
    (tmp_path / "results.json").write_text(content)
    one_line_error(invoke("report", tmp_path), r"results\.json: (holds|not a run's results)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


@pytest.mark.parametrize("size", ["infGB", "0", "-5", "nanMB", "5XB"])
def test_out_shard_size_checked_before_any_work(tmp_path, size):
    res = invoke("merge", "quickstart-tiny", "--out", tmp_path / "m", f"--out-shard-size={size}")
    one_line_error(res, r"--out-shard-size '.*': (give a positive|write e\.g\.)")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("value", ["1000000000", "0", "1e12", "x"])
def test_group_size_is_bounded(tiny_triplet, tmp_path, value):
    res = invoke(
        "task-vector", "--pretrained", tiny_triplet["pretrained"], "--domain",
        tiny_triplet["domain"], "--bits", "4", "--group-size", value, "--out", tmp_path / "t",
    )  # fmt: skip
    one_line_error(res, r"--group-size")
    assert not (tmp_path / "t").exists()


def test_save_best_with_a_name_too_long_refused_before_the_run(tmp_path):
    res = invoke(
        "run", "quickstart", "--out", tmp_path / "o", "--cache-dir", tmp_path / "c",
        "--save-best", tmp_path / ("n" * 300),
    )  # fmt: skip
    one_line_error(res, r"--save-best .*: the name .* is 300 bytes")
    assert not (tmp_path / "o").exists()


def test_disk_full_during_a_write_is_one_line(tmp_path, monkeypatch):
    import errno

    import mergekit_ir.storage.atomic as atomic

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "t" / "x"))

    monkeypatch.setattr(atomic, "write_bytes", full)
    monkeypatch.setattr(atomic, "write_text", full)
    (tmp_path / "results.json").write_text("{}")
    one_line_error(invoke("report", tmp_path), r"disk full writing .*; free space and rerun")


# -- the catalogue: property-based, per command -----------------------------------------------------
NUMBER_TEXT = st.one_of(
    st.sampled_from(["nan", "inf", "-inf", "1e309", "-0", "1e23", "1e-400", "", " ", "0x10"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.text(string.printable, max_size=8),
)
ADAPT_FLAGS = ["--lr", "--warmup", "--epochs", "--seed", "--steps", "--max-length", "--batch-size"]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(flag=st.sampled_from(ADAPT_FLAGS), value=NUMBER_TEXT)
def test_adapt_numeric_flags_are_one_line_or_accepted(tmp_path, flag, value):
    """Any text for a numeric flag: accepted by the flag type, or one line naming the flag —
    never a traceback, and (the base does not exist) nothing written either way."""
    from mergekit_ir.adaptation.spec import ADAPT_PARAMS
    from mergekit_ir.cli import Number

    param = ADAPT_PARAMS[flag.removeprefix("--").replace("-", "_")]
    try:
        checked = Number(param).convert(value, None, None)
    except ConfigError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(f"--{param.name}")
        return
    assert isinstance(checked, param.type) and not isinstance(checked, bool)
    assert param.min <= checked <= param.max
    if isinstance(checked, float):
        assert checked == checked and abs(checked) != float("inf")


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    alpha=NUMBER_TEXT,
    shard=st.one_of(NUMBER_TEXT, NUMBER_TEXT.map(lambda v: v + "GB")),
)
def test_merge_options_catalogue(tmp_path_factory, alpha, shard):
    """``mergeir merge`` with any α and shard size: rc 0 with a complete output, or one line
    and nothing written."""
    work = tmp_path_factory.mktemp("cat")
    out = work / "m"
    res = CliRunner().invoke(
        main,
        ["merge", "quickstart-tiny", "--alpha", alpha, f"--out-shard-size={shard}",
         "--out", str(out), "-q"],
        env={"MERGEIR_CACHE": str(tmp_path_factory.getbasetemp() / "qs-cache")},
    )  # fmt: skip
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    if res.exit_code == 0:
        card = json.loads((out / "mergekit_ir.json").read_text())
        assert card and any(p.suffix == ".safetensors" for p in out.iterdir())
    else:
        one_line_error(res, r"^error: ")
        assert not out.exists()
    assert sorted(os.listdir(work)) in ([], ["m"])


def test_two_writers_of_one_cache_entry_do_not_collide(tmp_path):
    """Two runs sharing a cold cache: the second index to finish finds the first one's folder
    in place (the OSError 39 of the review) and keeps it."""
    from mergekit_ir.storage import atomic

    entry = tmp_path / "bm25s-abc"
    with atomic.directory(entry, content_addressed=True) as tmp:
        (tmp / "doc_ids.json").write_text("ours")
        entry.mkdir()  # the other process renamed its folder into place meanwhile
        (entry / "doc_ids.json").write_text("theirs")
    assert (entry / "doc_ids.json").read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["bm25s-abc"]  # no temporaries left


def test_saved_files_follow_the_umask_even_when_a_library_writes_them_private(tmp_path):
    from mergekit_ir.storage import atomic

    with atomic.directory(tmp_path / "out") as tmp:
        (tmp / "model.safetensors").write_bytes(b"x")
        os.chmod(tmp / "model.safetensors", 0o600)
    mode = (tmp_path / "out" / "model.safetensors").stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


def test_a_cached_ranking_must_rank_the_candidates():
    from mergekit_ir.experiments.runner import ranks_candidates

    candidates = {"q1": {"d1": 2.0, "d2": 1.0}, "q2": {}}
    assert ranks_candidates({"q1": {"d1": 0.3, "d2": 0.1}}, candidates)
    assert not ranks_candidates({}, candidates)  # an entry replaced by {}
    assert not ranks_candidates({"q1": {"d1": 0.3}}, candidates)  # truncated
    # a query with no candidates may come back as {} (NFCorpus has one): still a full entry,
    # which was taken for a broken one and recomputed on every warm run
    assert ranks_candidates({"q1": {"d1": 0.3, "d2": 0.1}, "q2": {}}, candidates)
    assert not ranks_candidates({"q1": {"d1": 0.3, "d2": 0.1}, "q3": {"d1": 1.0}}, candidates)


@pytest.mark.slow
def test_strict_refuses_on_a_warm_cache_and_emptied_entries_are_recomputed(tmp_path, tiny_triplet):
    from test_reliability_runs import CROSS_ENCODER_REGISTRY, run

    reg = tmp_path / "registry.yaml"
    reg.write_text(
        CROSS_ENCODER_REGISTRY.replace("{pretrained}", str(tiny_triplet["pretrained"]))
        .replace("{domain}", str(tiny_triplet["domain"]))
        .replace("{ir}", str(tiny_triplet["ir"]))
    )
    out, cache = tmp_path / "out", tmp_path / "cache"
    assert run(out, cache, "cross", registry=str(reg)).exit_code == 0
    first = json.loads((out / "results.json").read_text())["sections"]
    res = run(tmp_path / "strict", cache, "cross", "--strict", registry=str(reg))
    assert res.exit_code == 2 and "under --strict" in res.output, res.output
    assert not (tmp_path / "strict").exists()
    for entry in (cache / "runs" / "model").glob("*.json"):
        entry.write_text("{}")  # the review's "cache entries replaced by {}"
    assert run(out, cache, "cross", registry=str(reg)).exit_code == 0
    again = json.loads((out / "results.json").read_text())["sections"]
    assert [r["cells"] for r in again[0]["rows"]] == [r["cells"] for r in first[0]["rows"]]


def test_a_link_inside_theta_t_to_outside_is_not_copied(tiny_triplet, tmp_path):
    import shutil

    ir = tmp_path / "ir"
    shutil.copytree(tiny_triplet["ir"], ir)
    secret = tmp_path / "secret.txt"
    secret.write_text("do not ship")
    (ir / "notes.txt").symlink_to(secret)
    res = invoke(
        "merge", "--ir", ir, "--pretrained", tiny_triplet["pretrained"],
        "--domain", tiny_triplet["domain"], "--out", tmp_path / "m", "-q",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "m" / "notes.txt").exists()
    assert (tmp_path / "m" / "config.json").is_file()


@pytest.mark.parametrize("bad", ["null", '""', '"  "', "true", "[1]"])
def test_doc_ids_must_be_non_empty(tmp_path, bad):
    from mergekit_ir.errors import DatasetError
    from mergekit_ir.evaluation.datasets import load_beir_folder

    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text(f'{{"_id": {bad}, "text": "x"}}\n')
    (tmp_path / "queries.jsonl").write_text('{"_id": "q", "text": "x"}\n')
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq\td\t1\n")
    with pytest.raises(DatasetError, match=r"corpus\.jsonl:1: '_id' is .*; give a non-empty"):
        load_beir_folder(tmp_path, "test")


def test_a_nan_mean_is_never_bold():
    from mergekit_ir.reports.render import _best_of

    assert _best_of([0.5, float("nan"), float("inf"), 0.7]) == "0.700"
    assert _best_of([float("nan")]) is None


def test_a_saved_tau_of_another_base_is_refused(tiny_triplet, tmp_path):
    t = tiny_triplet
    made = invoke(
        "task-vector", "--pretrained", t["pretrained"], "--domain", t["domain"], "--bits", "4",
        "--out", tmp_path / "tau",
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    ok = invoke(
        "merge", "--ir", t["ir"], "--pretrained", t["pretrained"],
        "--domain", f"task_vector:{tmp_path / 'tau'}", "--out", tmp_path / "m1", "-q",
    )  # fmt: skip
    assert ok.exit_code == 0, ok.output
    res = invoke(
        "merge", "--ir", t["ir"], "--pretrained", t["domain"],  # another Θ0
        "--domain", f"task_vector:{tmp_path / 'tau'}", "--out", tmp_path / "m2", "-q",
    )  # fmt: skip
    one_line_error(res, r"this τ was taken against another Θ0")
    assert not (tmp_path / "m2").exists()


JSON = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=6),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(
        st.sampled_from(["sections", "rows", "cells", "metrics", "datasets", "key", "mean",
                         "per_query", "alpha_ablation", "verdicts", "manifest", "x"]),
        children,
        max_size=4,
    ),
    max_leaves=12,
)  # fmt: skip


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=JSON)
def test_report_catalogue(tmp_path_factory, raw):
    """`mergeir report` on any JSON value in results.json: reports written, or one line —
    never a traceback, and the folder holds nothing but what it wrote."""
    folder = tmp_path_factory.mktemp("rep")
    (folder / "results.json").write_text(json.dumps(raw))
    res = CliRunner().invoke(main, ["report", str(folder)])
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    if res.exit_code != 0:
        one_line_error(res, r"results\.json")
        assert sorted(p.name for p in folder.iterdir()) == ["results.json"]


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    bits=st.sampled_from(["2", "3", "4", "8", "5", "0", "x"]),
    group=NUMBER_TEXT,
    below=NUMBER_TEXT,
)
def test_task_vector_options_catalogue(tiny_triplet, tmp_path_factory, bits, group, below):
    """`mergeir task-vector` with any bits, group size and keep-full threshold: a saved τ, or
    one line and nothing written."""
    work = tmp_path_factory.mktemp("tv")
    res = CliRunner().invoke(
        main,
        ["task-vector", "--pretrained", str(tiny_triplet["pretrained"]),
         "--domain", str(tiny_triplet["domain"]), "--bits", bits, "--group-size", group,
         "--keep-full-below", below, "--out", str(work / "tau")],
    )  # fmt: skip
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    if res.exit_code == 0:
        assert (work / "tau" / "task_vector.json").is_file()
    else:
        one_line_error(res, r"^error: ")  # click's usage errors included
        assert not (work / "tau").exists()
    assert sorted(os.listdir(work)) in ([], ["tau"])
