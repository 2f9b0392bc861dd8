"""Broken BEIR folders: duplicate ids, odd grades, bad bytes, empty files — one line each."""

from __future__ import annotations

import json
import logging

import pytest
from test_datasets import make_beir

from mergekit_ir.errors import DatasetError
from mergekit_ir.evaluation.datasets import Document, load_beir_folder, read_qrels
from mergekit_ir.params import check_params
from mergekit_ir.plugin_host import catalog


def qrels(root, body: bytes):
    (root / "qrels" / "test.tsv").write_bytes(body)


def test_duplicate_corpus_id_names_both_lines(tmp_path):
    lines = [json.dumps({"_id": i, "text": f"doc {i}"}) for i in ("a", "b", "0", "c")]
    lines.append(json.dumps({"_id": "b", "text": "other text"}))
    root = make_beir(tmp_path / "b", corpus_lines=lines)
    with pytest.raises(
        DatasetError, match=r"corpus\.jsonl:5: duplicate _id 'b' \(first on line 2\)"
    ):
        load_beir_folder(root, "test")


def test_duplicate_query_id(tmp_path):
    root = make_beir(tmp_path / "b")
    with (root / "queries.jsonl").open("a") as f:
        f.write(json.dumps({"_id": "2", "text": "q two again"}) + "\n")
    with pytest.raises(
        DatasetError, match=r"queries\.jsonl:4: duplicate _id '2' \(first on line 2\)"
    ):
        load_beir_folder(root, "test")


@pytest.mark.parametrize(
    ("score", "pattern"),
    [
        (b"0.7", r"test\.tsv:2: score '0\.7' is not an integer grade"),
        (b"inf", r"test\.tsv:2: score 'inf' is not an integer grade"),
        (b"nan", r"test\.tsv:2: score 'nan' is not an integer grade"),
        (b"abc", r"test\.tsv:2: score 'abc' is not a number"),
    ],
)
def test_grades_that_are_not_integers_are_refused(tmp_path, score, pattern):
    root = make_beir(tmp_path / "b", qrels=b"query-id\tcorpus-id\tscore\n1\t10\t" + score + b"\n")
    with pytest.raises(DatasetError, match=pattern):
        load_beir_folder(root, "test")


def test_graded_relevance_read_as_written(tmp_path):
    root = make_beir(tmp_path / "b", qrels=b"1\t10\t2\n2\t0\t1.0\n3\t0\t0\n3\t10\t-1\n")
    assert read_qrels(root / "qrels" / "test.tsv") == {
        "1": {"10": 2},
        "2": {"0": 1},
        "3": {"0": 0, "10": -1},
    }


def test_headerless_first_row_with_bad_score_is_an_error(tmp_path):
    root = make_beir(tmp_path / "b", qrels=b"1\t10\tx1\n2\t0\t1\n")
    with pytest.raises(DatasetError, match=r"test\.tsv:1: score 'x1' is not a number"):
        load_beir_folder(root, "test")


@pytest.mark.parametrize("body", [b"", b"\n\n", b"query-id\tcorpus-id\tscore\n"])
def test_empty_or_header_only_qrels(tmp_path, body):
    root = make_beir(tmp_path / "b", qrels=body or b"x")
    qrels(root, body)
    with pytest.raises(DatasetError, match=r"test\.tsv: no judgments \(the file is empty or only"):
        load_beir_folder(root, "test")


def test_empty_corpus_and_all_empty_documents(tmp_path):
    root = make_beir(tmp_path / "b")
    (root / "corpus.jsonl").write_text("\n")
    with pytest.raises(DatasetError, match=r"corpus\.jsonl: the corpus has no documents"):
        load_beir_folder(root, "test")
    (root / "corpus.jsonl").write_text(
        json.dumps({"_id": "0", "title": "", "text": ""}) + "\n" + json.dumps({"_id": "10"}) + "\n"
    )
    with pytest.raises(DatasetError, match=r"corpus\.jsonl: all 2 documents have empty title"):
        load_beir_folder(root, "test")


@pytest.mark.parametrize("profile", ["bm25s", "elasticsearch"])
def test_all_stopword_corpus(profile):
    fs = catalog().first_stage("bm25s")
    params = check_params(fs.params, {"profile": profile}, "x", "bm25s")
    corpus = {"a": Document("", "the and of"), "b": Document("The", "an a")}
    with pytest.raises(DatasetError, match=r"none of its 2 documents has a term left"):
        fs.build(corpus, params, None)


def test_non_utf8_names_file_and_line(tmp_path):
    root = make_beir(tmp_path / "b")
    with (root / "corpus.jsonl").open("ab") as f:
        f.write(b'{"_id": "x", "text": "caf\xe9"}\n')
    with pytest.raises(DatasetError, match=r"corpus\.jsonl:3: byte 0xe9 at column 26 is not UTF-8"):
        load_beir_folder(root, "test")
    root = make_beir(tmp_path / "c", qrels=b"1\t10\t1\n2\t\xff0\t1\n")
    with pytest.raises(DatasetError, match=r"test\.tsv:2: byte 0xff at column 3 is not UTF-8"):
        load_beir_folder(root, "test")


def test_judged_documents_missing_from_corpus_are_counted(tmp_path, caplog):
    root = make_beir(tmp_path / "b", qrels=b"1\t10\t1\n2\tgone\t1\n3\tlost\t1\n3\t0\t1\n")
    with caplog.at_level(logging.WARNING, logger="mergekit_ir.evaluation.datasets"):
        ds = load_beir_folder(root, "test")
    assert "2 judged document(s) are not in the corpus (e.g. 'gone')" in caplog.text
    assert ds.qrels["3"] == {"lost": 1, "0": 1}  # kept: they still count as relevant
