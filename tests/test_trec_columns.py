"""Every TREC run we write has six columns (``qid Q0 docid rank score tag``), so trec_eval,
ir_measures and PyTerrier read it: tags are made safe at the writer, ids that would break a
column are refused there, and the files `mergeir run` and `mergeir rerank` write read back."""

from __future__ import annotations

from pathlib import Path

import ir_measures
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from mergekit_ir.cli import main
from mergekit_ir.errors import DatasetError
from mergekit_ir.evaluation.trec_runs import read_trec, safe_tag, write_trec

REGISTRY = str(Path(__file__).resolve().parents[1] / "registry.yaml")


def columns_per_line(path: Path) -> set[int]:
    return {len(line.split()) for line in path.read_text(encoding="utf-8").splitlines()}


def read_back(path: Path) -> dict[str, dict[str, float]]:
    """The run as ir_measures reads it (it unpacks exactly six columns a line)."""
    run: dict[str, dict[str, float]] = {}
    for sd in ir_measures.read_trec_run(str(path)):
        run.setdefault(sd.query_id, {})[sd.doc_id] = sd.score
    return run


def same_run(a: dict, b: dict, tol: float = 1e-6) -> bool:
    """Same queries and documents; scores equal to the six decimals a TREC file keeps."""
    return {q: set(d) for q, d in a.items()} == {q: set(d) for q, d in b.items()} and all(
        abs(a[q][d] - b[q][d]) <= tol for q in a for d in a[q]
    )


# -- the writer ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tag", "written"),
    [
        ("first stage", "first_stage"),
        ("a\tb\nc  d", "a_b_c_d"),
        ("  padded  ", "_padded_"),
        ("no\u00a0break\u2028sep", "no_break_sep"),  # Unicode whitespace splits lines too
        ("", "run"),
        ("merged@best", "merged@best"),
    ],
)
def test_tags_are_made_one_column(tmp_path, tag, written):
    path = tmp_path / "r.trec"
    write_trec(path, {"q1": {"d1": 2.0, "d2": 1.0}}, tag)
    assert safe_tag(tag) == written
    assert columns_per_line(path) == {6}
    assert [line.split()[5] for line in path.read_text().splitlines()] == [written, written]
    assert read_back(path) == {"q1": {"d1": 2.0, "d2": 1.0}}


@pytest.mark.parametrize(
    ("run", "what", "shown"),
    [
        ({"q1": {"doc one": 1.0}}, "document", "'doc one'"),
        ({"q1": {"d\t1": 1.0}}, "document", "'d\\t1'"),
        ({"q1": {"d1\n": 1.0}}, "document", "'d1\\n'"),
        ({"q1": {"d\u00a01": 1.0}}, "document", "'d\\xa01'"),
        ({"q1": {"": 1.0}}, "document", "''"),
        ({"query 1": {"d1": 1.0}}, "query", "'query 1'"),
        ({"q\u20281": {"d1": 1.0}}, "query", "'q\\u20281'"),
        ({"": {"d1": 1.0}}, "query", "''"),
    ],
)
def test_ids_that_would_break_a_column_are_refused_naming_them(tmp_path, run, what, shown):
    path = tmp_path / "r.trec"
    with pytest.raises(DatasetError) as err:
        write_trec(path, {"q0": {"d0": 1.0}, **run}, "tag")
    message = str(err.value)
    assert "\n" not in message and f"{what} id {shown}" in message and str(path) in message
    assert not path.exists()  # refused before anything was written


def test_hostile_but_whitespace_free_ids_round_trip(tmp_path):
    run = {
        "q'1\"": {"d#1": 3.5, "d/é/2": -1.25, "Q0": 0.0},
        "qé-ü": {"x,y;z": 1e-6, "0": 7.0},
    }
    path = tmp_path / "r.trec"
    write_trec(path, run, "my run")
    assert columns_per_line(path) == {6}
    assert same_run(read_back(path), run) and same_run(read_trec(path), run)


_IDS = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",)).filter(lambda c: not c.isspace()),
    min_size=1,
    max_size=8,
)


@settings(max_examples=40, deadline=None)
@given(
    run=st.dictionaries(
        _IDS, st.dictionaries(_IDS, st.floats(-1e6, 1e6), min_size=1, max_size=4), max_size=3
    ).filter(bool),
    tag=st.text(max_size=12),
)
def test_any_whitespace_free_ids_and_any_tag_give_six_columns(tmp_path_factory, run, tag):
    path = tmp_path_factory.mktemp("trec") / "r.trec"
    write_trec(path, run, tag)
    assert columns_per_line(path) == {6}
    assert same_run(read_trec(path), run)
    assert all(line.split()[5] == safe_tag(tag) for line in path.read_text().splitlines())


# -- every file the commands write ---------------------------------------------------------------


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def assert_readable(folder: Path) -> list[Path]:
    files = sorted(folder.rglob("*.trec"))
    assert files, f"no TREC files under {folder}"
    for path in files:
        assert columns_per_line(path) == {6}, path
        assert same_run(read_back(path), read_trec(path)), path
    return files


@pytest.mark.slow
def test_every_run_file_of_the_quickstart_has_six_columns(quickstart_run):
    files = assert_readable(quickstart_run[0] / "out")
    assert {p.name for p in files} >= {"bm25.trec", "ir.trec", "merged_at_best.trec"}


@pytest.mark.slow
def test_every_run_file_of_rerank_has_six_columns(quickstart_run, tmp_path):
    cache = quickstart_run[0] / "cache"
    res = invoke("rerank", "quickstart:ir", "--scorer", "bi-encoder", "--dataset",
                 "quickstart-toy", "--registry", REGISTRY, "--cache-dir", str(cache),
                 "--out", str(tmp_path / "rr"), "-q")  # fmt: skip
    assert res.exit_code == 0, res.output
    files = assert_readable(tmp_path / "rr")
    assert [p.name for p in files] == ["first_stage.trec", "fused.trec", "model.trec"]
    first = (tmp_path / "rr" / "quickstart-toy" / "first_stage.trec").read_text().splitlines()
    assert {line.split()[5] for line in first} == {"first_stage"}
