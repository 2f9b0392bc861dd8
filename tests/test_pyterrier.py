"""PyTerrier transformers over our first stage and scorers (the ``pyterrier`` extra): they
score what `mergeir rerank` scores, run in `pt.Experiment`, and never start Java."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

pt = pytest.importorskip("pyterrier")
pd = pytest.importorskip("pandas")

from conftest import shared_path  # noqa: E402
from mergekit_ir.api.pyterrier import MergeIRBM25, MergeIRReranker, load_beir  # noqa: E402
from mergekit_ir.cli import main  # noqa: E402
from mergekit_ir.errors import ConfigError, DatasetError, PluginError  # noqa: E402
from mergekit_ir.evaluation.trec_runs import read_trec  # noqa: E402
from mergekit_ir.plugin_host import catalog  # noqa: E402

REGISTRY = str(Path(__file__).resolve().parents[1] / "registry.yaml")
TINY = {"pooling": "mean", "similarity": "cosine"}  # the quickstart-tiny triplet's options


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pt-cache")


@pytest.fixture(scope="module")
def toy(cache):
    return load_beir("quickstart:toy", cache_dir=cache)


@pytest.fixture(scope="module")
def bm25(toy):
    return MergeIRBM25(toy.dataset, k=10)


@pytest.fixture(scope="module")
def reranker(cache):
    return MergeIRReranker("quickstart:ir", "bi-encoder", TINY, device="cpu", cache_dir=cache)


def toy_folder(ds) -> Path:
    """The BEIR folder a dataset was read from (``source`` is ``<folder>@<split>``)."""
    return Path(ds.source.rpartition("@")[0])


def by_pair(frame) -> dict[str, dict[str, float]]:
    run: dict[str, dict[str, float]] = {}
    for q, d, s in zip(frame["qid"], frame["docno"], frame["score"], strict=True):
        run.setdefault(q, {})[d] = float(s)
    return run


def table(output: str) -> dict[str, dict[str, float]]:
    """`mergeir rerank`'s printed table: row -> metric -> mean."""
    lines = [ln for ln in output.splitlines() if ln.startswith("| ")]
    metrics = [m.strip() for m in lines[0].strip(" |").split("|")[1:]]
    return {
        cells[0].strip(): dict(zip(metrics, map(float, cells[1:]), strict=True))
        for cells in (ln.strip(" |").split("|") for ln in lines[1:])
    }


def assert_same_run(ours: dict, theirs: dict, tol: float) -> None:
    assert {q: set(d) for q, d in ours.items()} == {q: set(d) for q, d in theirs.items()}
    worst = max(abs(ours[q][d] - theirs[q][d]) for q in ours for d in ours[q])
    assert worst <= tol, worst


# -- data and first stage -----------------------------------------------------------------------


def test_load_beir_gives_topics_and_qrels_frames(toy):
    topics, qrels, ds = toy
    assert list(topics.columns) == ["qid", "query"] and len(topics) == len(ds.queries) == 24
    assert dict(zip(topics["qid"], topics["query"], strict=True)) == ds.queries
    assert list(qrels.columns) == ["qid", "docno", "label"] and qrels["label"].dtype == "int64"
    assert len(qrels) == sum(len(d) for d in ds.qrels.values())
    assert len(load_beir(toy_folder(ds), "test[:5]").topics) == 5


def test_bm25_is_the_bm25s_backend_as_a_result_frame(toy, bm25):
    topics, _, ds = toy
    res = bm25(topics)
    assert list(res.columns) == ["qid", "query", "docno", "text", "score", "rank"]
    direct = catalog().first_stage("bm25s").build(ds.corpus, {}, None).search(ds.queries, 10)
    assert by_pair(res) == direct
    for _, group in res.groupby("qid"):
        assert list(group["rank"]) == list(range(len(group))) and len(group) <= 10
        assert list(group["score"]) == sorted(group["score"], reverse=True)
    assert all(t == ds.corpus[d].full_text for d, t in zip(res["docno"], res["text"], strict=True))


def test_bm25_takes_a_folder_a_mapping_or_a_frame(toy, bm25):
    topics, _, ds = toy
    want = by_pair(bm25(topics))
    folder = toy_folder(ds)
    frame = pd.DataFrame(
        {"docno": list(ds.corpus), "title": [d.title for d in ds.corpus.values()],
         "text": [d.text for d in ds.corpus.values()]}
    )  # fmt: skip
    for source in (folder, str(folder), dict(ds.corpus), frame):
        assert by_pair(MergeIRBM25(source, k=10)(topics)) == want
    mapping = {"a": "heart attack", "b": "brain tumour", "c": "heart and brain"}
    res = MergeIRBM25(mapping, k=2)(pd.DataFrame({"qid": ["1"], "query": ["heart"]}))
    assert list(res["docno"]) == ["a", "c"] and list(res["text"]) == [
        "heart attack",
        "heart and brain",
    ]


def test_bm25_errors_are_one_line(tmp_path):
    for bad, kind in (
        (tmp_path / "nope", DatasetError),
        (42, DatasetError),
        (pd.DataFrame({"docno": ["a"]}), DatasetError),
    ):
        with pytest.raises(kind) as err:
            MergeIRBM25(bad)
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="k1"):
        MergeIRBM25({"a": "text"}, params={"k1": -1})
    with pytest.raises(ConfigError, match="k: 0"):
        MergeIRBM25({"a": "text"}, k=0)


# -- re-ranking ---------------------------------------------------------------------------------


def test_reranker_is_inspectable_and_takes_empty_frames(bm25, reranker):
    assert pt.inspect.transformer_inputs(reranker) == [["qid", "docno", "query", "text"]]
    assert pt.inspect.transformer_outputs(bm25 >> reranker, ["qid", "query"]) == [
        "qid", "query", "docno", "text", "score", "rank"
    ]  # fmt: skip
    with pytest.raises(pt.validate.InputValidationError):
        reranker(pd.DataFrame({"qid": ["1"], "query": ["q"], "docno": ["d"]}))  # no text


def test_reranker_scores_as_its_scorer_does(toy, bm25, reranker):
    topics, _, ds = toy
    first = bm25(topics.head(3))
    res = reranker(first)
    candidates = {q: dict.fromkeys(d, 0.0) for q, d in by_pair(first).items()}
    docs = {d: ds.corpus[d].full_text for d in first["docno"]}
    assert by_pair(res) == reranker.scorer.rerank(ds.queries, candidates, docs)
    for _, group in res.groupby("qid"):
        assert list(group["rank"]) == list(range(len(group)))
        assert list(group["score"]) == sorted(group["score"], reverse=True)
    assert set(res.columns) == set(first.columns)


def test_experiment_on_the_toy_collection_without_java(toy, bm25, reranker):
    topics, qrels, _ = toy
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*could not be validated.*")  # inspectable
        warnings.filterwarnings("ignore", message="There are shared pipeline components")
        res = pt.Experiment(
            [bm25, bm25 >> reranker], topics, qrels, eval_metrics=["ndcg_cut_10"],
            baseline=0, test="t", correction="bonferroni",
        )  # fmt: skip
    assert len(res) == 2 and "ndcg_cut_10 p-value corrected" in res.columns
    assert 0 < res["ndcg_cut_10"].min() <= res["ndcg_cut_10"].max() <= 1
    assert not pt.java.started() and not any(m.startswith("jnius") for m in sys.modules)


def test_pipeline_reproduces_mergeir_rerank_on_the_toy(toy, bm25, reranker, cache, tmp_path):
    res = CliRunner().invoke(
        main,
        ["rerank", "quickstart:ir", "--scorer", "bi-encoder", "--option", "pooling=mean",
         "--option", "similarity=cosine", "--dataset", "quickstart-toy", "--registry", REGISTRY,
         "--first-stage", "bm25s", "--k", "10", "--device", "cpu", "--cache-dir", str(cache),
         "--out", str(tmp_path), "-q"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    topics, qrels, _ = toy
    run = (bm25 >> reranker)(topics)
    runs = tmp_path / "quickstart-toy"
    assert_same_run(by_pair(bm25(topics)), read_trec(runs / "first_stage.trec"), 1e-6)
    assert_same_run(by_pair(run), read_trec(runs / "model.trec"), 1e-6)
    ndcg = pt.Experiment([run], topics, qrels, eval_metrics=["ndcg_cut_10"])["ndcg_cut_10"][0]
    assert ndcg == pytest.approx(table(res.output)["model"]["NDCG@10"], abs=5e-5)


def test_from_triplet_merges_once_and_scores_theta_prime(toy, bm25, reranker, cache):
    topics = toy.topics.head(4)
    first = bm25(topics)
    at0 = MergeIRReranker.from_triplet(
        "quickstart-tiny", 0, REGISTRY, device="cpu", cache_dir=cache
    )
    assert at0.folder.parent == cache / "pyterrier-merges" and at0.options == reranker.options
    assert_same_run(by_pair(at0(first)), by_pair(reranker(first)), 1e-6)  # Θ'(α=0) = ΘT
    written = (at0.folder / "model.safetensors").stat().st_mtime_ns
    again = MergeIRReranker.from_triplet(
        "quickstart-tiny", 0.0, REGISTRY, device="cpu", cache_dir=cache
    )
    assert again.folder == at0.folder
    assert (again.folder / "model.safetensors").stat().st_mtime_ns == written  # reused
    at1 = MergeIRReranker.from_triplet(
        "quickstart-tiny", 1, REGISTRY, device="cpu", cache_dir=cache
    )
    assert at1.folder != at0.folder
    assert by_pair(at1(first)) != by_pair(at0(first))


def test_reranker_errors_are_one_line(cache):
    with pytest.raises(PluginError, match="unknown scorer 'nope'"):
        MergeIRReranker("quickstart:ir", "nope", cache_dir=cache)
    with pytest.raises(ConfigError, match="pooling"):
        MergeIRReranker("quickstart:ir", options={"pooling": "median"}, cache_dir=cache)
    with pytest.raises(ConfigError, match="unknown parameter"):
        MergeIRReranker("quickstart:ir", options={"poling": "mean"}, cache_dir=cache)
    with pytest.raises(ConfigError, match="batch_size: 0"):
        MergeIRReranker("quickstart:ir", batch_size=0, cache_dir=cache)


# -- real data ----------------------------------------------------------------------------------

SCIFACT_QUERIES = 10  # the first 10 SciFact test queries (qrels order): equality needs no more


@pytest.mark.slow
def test_pipeline_reproduces_mergeir_rerank_on_scifact(tmp_path):
    folder = shared_path("data", "beir", "scifact")
    model = shared_path("models", "all-MiniLM-L6-v2")
    split = f"test[:{SCIFACT_QUERIES}]"
    registry = tmp_path / "registry.yaml"
    registry.write_text(f"datasets:\n  scifact:\n    beir: {folder}\n    test: '{split}'\n")
    cache = tmp_path / "cache"
    res = CliRunner().invoke(
        main,
        ["rerank", str(model), "--scorer", "bi-encoder", "--dataset", "scifact", "--registry",
         str(registry), "--first-stage", "bm25s", "--k", "10", "--device", "cpu",
         "--cache-dir", str(cache), "--out", str(tmp_path / "out"), "-q"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    shown = table(res.output)

    topics, qrels, ds = load_beir(folder, split)
    assert len(topics) == SCIFACT_QUERIES
    bm25 = MergeIRBM25(ds, k=10)  # its own index, in memory: not the one rerank cached
    pipeline = bm25 >> MergeIRReranker(model, "bi-encoder", device="cpu")
    run = pipeline(topics)
    assert_same_run(by_pair(run), read_trec(tmp_path / "out" / "scifact" / "model.trec"), 1e-5)
    ndcg = pt.Experiment([bm25, run], topics, qrels, eval_metrics=["ndcg_cut_10"])["ndcg_cut_10"]
    assert ndcg[0] == pytest.approx(shown["first stage"]["NDCG@10"], abs=5e-5)
    assert ndcg[1] == pytest.approx(shown["model"]["NDCG@10"], abs=5e-5)
