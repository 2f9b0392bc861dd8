"""Datasets: local BEIR folders and ir_datasets behind one interface."""

from __future__ import annotations

import json

import pytest

from conftest import BEIR, shared_path
from mergekit_ir.errors import DatasetError
from mergekit_ir.evaluation.datasets import load_beir_folder, load_ir_datasets, parse_split


def make_beir(root, corpus_lines=None, qrels=None):
    root.mkdir(parents=True, exist_ok=True)
    (root / "qrels").mkdir(exist_ok=True)
    corpus = corpus_lines or [
        json.dumps({"_id": "0", "title": "T", "text": "zero", "metadata": {}}),
        json.dumps({"_id": "10", "title": "", "text": "ten"}),
    ]
    (root / "corpus.jsonl").write_text("\n".join(corpus) + "\n")
    (root / "queries.jsonl").write_text(
        json.dumps({"_id": "1", "text": "q one", "metadata": {"10": [{"label": "SUPPORT"}]}})
        + "\n"
        + json.dumps({"_id": "2", "text": "q two"})
        + "\n"
        + json.dumps({"_id": "3", "text": "q three"})
        + "\n"
    )
    (root / "qrels" / "test.tsv").write_bytes(
        qrels or b"query-id\tcorpus-id\tscore\r\n1\t10\t1\r\n2\t0\t2\r\n3\t0\t1\r\n"
    )
    return root


def test_beir_ids_are_strings_crlf_and_header(tmp_path):
    ds = load_beir_folder(make_beir(tmp_path / "b"), "test")
    assert ds.qrels == {"1": {"10": 1}, "2": {"0": 2}, "3": {"0": 1}}
    assert set(ds.corpus) == {"0", "10"} and ds.corpus["0"].full_text == "T zero"
    assert ds.queries["1"] == "q one"  # metadata never read


def test_slice_in_qrels_order(tmp_path):
    ds = load_beir_folder(make_beir(tmp_path / "b"), "test[:67%]")
    assert list(ds.queries) == ["1", "2"]
    assert list(load_beir_folder(tmp_path / "b", "test[:1]").queries) == ["1"]
    assert parse_split("train[:20%]") == ("train", 20, True)
    with pytest.raises(DatasetError, match="write a split name"):
        parse_split("train[20%]")


def test_broken_json_names_file_and_line(tmp_path):
    root = make_beir(
        tmp_path / "b", corpus_lines=[json.dumps({"_id": "0", "text": "a"}), "{not json"]
    )
    with pytest.raises(DatasetError, match=r"corpus\.jsonl:2: not valid JSON"):
        load_beir_folder(root, "test")


def test_bad_qrels_and_missing_split(tmp_path):
    root = make_beir(tmp_path / "b", qrels=b"query-id\tcorpus-id\tscore\n1\t10\tabc\n")
    with pytest.raises(DatasetError, match=r"test\.tsv:2: score 'abc' is not a number"):
        load_beir_folder(root, "test")
    with pytest.raises(
        DatasetError, match=r"qrels/dev\.tsv: qrels file not found \(available splits: test\)"
    ):
        load_beir_folder(root, "dev")
    with pytest.raises(DatasetError, match="BEIR folder not found"):
        load_beir_folder(tmp_path / "nope", "test")


def test_unknown_ir_datasets_id():
    with pytest.raises(DatasetError, match=r"ir_datasets id 'beir/nonexistent/test' is unknown"):
        load_ir_datasets("beir/nonexistent/test")


@pytest.mark.slow
def test_scifact_dev_is_first_20_percent_of_train():
    folder = shared_path("data", "beir", "scifact")
    dev = load_beir_folder(folder, "train[:20%]")
    assert len(dev.queries) == 161
    order = [json.loads(line)["_id"] for line in (folder / "queries.jsonl").open()]
    train = load_beir_folder(folder, "train")
    in_file_order = [q for q in order if q in train.qrels]
    assert list(dev.queries) == in_file_order[:161]
    test = load_beir_folder(folder, "test")
    assert len(test.queries) == 300 and len(test.corpus) == 5183 and "4983" in test.corpus
    assert BEIR.exists()


def register_local_ir_dataset(dataset_id: str, corpus, queries, qrels) -> None:
    """Register BEIR-format local files under a private ir_datasets id (the real loaders)."""
    import ir_datasets
    from ir_datasets.datasets.base import Dataset as IrdsDataset
    from ir_datasets.datasets.beir import BeirDocs, BeirQrels, BeirQueries, BeirTitleDoc
    from ir_datasets.formats import GenericQuery
    from ir_datasets.util import LocalDownload

    if dataset_id not in ir_datasets.registry:
        ir_datasets.registry.register(
            dataset_id,
            IrdsDataset(
                BeirDocs(dataset_id, LocalDownload(corpus), BeirTitleDoc),
                BeirQueries(dataset_id, LocalDownload(queries), GenericQuery),
                BeirQrels(LocalDownload(qrels), {}),
            ),
        )


def test_ir_datasets_loader_on_local_files(tmp_path, monkeypatch):
    """The real ir_datasets path, fed from local files registered under a private id."""
    monkeypatch.setenv("IR_DATASETS_HOME", str(tmp_path / "irds"))
    root = make_beir(tmp_path / "b")
    dataset_id = f"mergekit-ir-test/{tmp_path.name}/test"
    register_local_ir_dataset(
        dataset_id, root / "corpus.jsonl", root / "queries.jsonl", root / "qrels" / "test.tsv"
    )
    via_irds = load_ir_datasets(dataset_id, name="toy")
    via_folder = load_beir_folder(root, "test", name="toy")
    assert via_irds.corpus == via_folder.corpus
    assert via_irds.queries == via_folder.queries and via_irds.qrels == via_folder.qrels
    assert list(load_ir_datasets(dataset_id + "[:1]").queries) == ["1"]


def test_ir_datasets_download_failure_is_one_line(tmp_path, monkeypatch):
    """A source ir_datasets cannot fetch (here a local file that is gone) is a DatasetError."""
    monkeypatch.setenv("IR_DATASETS_HOME", str(tmp_path / "irds"))
    gone = tmp_path / "gone"
    dataset_id = f"mergekit-ir-test/{tmp_path.name}-gone/test"
    register_local_ir_dataset(
        dataset_id, gone / "corpus.jsonl", gone / "queries.jsonl", gone / "test.tsv"
    )
    with pytest.raises(DatasetError) as err:
        load_ir_datasets(dataset_id)
    msg = str(err.value)
    assert "\n" not in msg and f"could not download {dataset_id!r}" in msg
    assert str(tmp_path / "irds") in msg and "beir:" in msg


def test_download_failure_names_the_unreachable_host():
    import requests

    exc = requests.exceptions.ConnectionError(
        "HTTPSConnectionPool(host='public.ukp.informatik.tu-darmstadt.de', port=443): Max retries"
    )
    from mergekit_ir.evaluation.datasets import download_failure

    msg = download_failure("beir/scifact/test", exc)
    assert "cannot reach public.ukp.informatik.tu-darmstadt.de" in msg and "\n" not in msg
