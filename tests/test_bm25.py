"""The bm25s first stage: analysers, Lucene BM25 arithmetic, profiles, languages, cache."""

from __future__ import annotations

import importlib.util
import logging
import math
from pathlib import Path

import pytest

from mergekit_ir.errors import ConfigError
from mergekit_ir.evaluation.datasets import Document, load_beir_folder
from mergekit_ir_plugins.first_stages import bm25s_backend as backend
from mergekit_ir_plugins.first_stages import lucene

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "beir"
BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "bm25_profiles.py"
LOGGER = "mergekit_ir_plugins.first_stages.bm25s_backend"


def corpus(*docs: tuple[str, str]) -> dict[str, Document]:
    return {f"d{i}": Document(title, text) for i, (title, text) in enumerate(docs, 1)}


# -- the english analyzer -------------------------------------------------------------


def test_lucene_stop_list_is_englishanalyzers_33_words():
    assert len(lucene.ENGLISH_STOP_WORDS) == 33
    assert {"the", "a", "with", "into", "such", "will"} <= lucene.ENGLISH_STOP_WORDS
    # NLTK's list has these; Lucene's does not
    assert not {"he", "she", "we", "were", "been", "have", "do"} & lucene.ENGLISH_STOP_WORDS


def test_standard_tokenizer_keeps_inner_apostrophes_dots_and_digits():
    assert lucene.standard_tokenize("Don't stop: U.S.A. 3.14, 1,000 IL-6 p53 foo_bar (x)") == [
        "Don't",
        "stop",
        "U.S.A",
        "3.14",
        "1,000",
        "IL",
        "6",
        "p53",
        "foo_bar",
        "x",
    ]
    assert lucene.standard_tokenize("中文 TNF-α") == ["中", "文", "TNF", "α"]
    assert lucene.standard_tokenize(" ... -- ") == []


def test_english_analyzer_stop_words_possessives_lowercase_porter():
    analyze = lucene.english_analyzer()
    assert analyze("The patient's STUDIES with IS and NOT") == ["patient", "studi"]
    assert analyze("Patients' ponies’s relational") == ["patient", "poni", "relat"]
    assert lucene.english_analyzer(stopwords=False)("the cat") == ["the", "cat"]
    assert lucene.english_analyzer(stemming=False)("The ponies") == ["ponies"]


def test_porter_is_lucenes_reference_version():
    stems = {
        "caresses": "caress",
        "ponies": "poni",
        "ties": "ti",
        "agreed": "agre",
        "hopping": "hop",
        "filing": "file",
        "relational": "relat",
        "generalization": "gener",
        "electrical": "electr",
        "adjustment": "adjust",
        "controlling": "control",
        # Porter's departures from the 1980 paper, which Lucene keeps (Snowball's "porter" does not)
        "possibly": "possibl",
        "anthropology": "anthropolog",
        "us": "us",
        "is": "is",
    }
    assert {w: lucene.porter_stem(w) for w in stems} == stems


def test_lengths_are_stored_lossily_like_lucene_norms():
    assert [lucene.quantized_length(n) for n in (0, 1, 23, 24, 40)] == [0, 1, 23, 24, 40]
    assert lucene.quantized_length(100) == 96
    assert lucene.quantized_length(210) == 200
    assert lucene.quantized_length(1000) == 984
    assert all(lucene.byte4_to_int(lucene.int_to_byte4(n)) <= n for n in range(5000))


# -- Lucene BM25 and best_fields, by hand -------------------------------------------------

K1, B = 1.2, 0.75


def lucene_bm25(tf: int, dl: int, avgdl: float, df: int, n: int) -> float:
    """Lucene 8+ BM25 for one term in one field (lengths below 24 are stored exactly)."""
    idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
    return idf * tf / (tf + K1 * (1 - B + B * dl / avgdl))


def test_best_fields_with_tie_breaker_matches_a_hand_computation():
    docs = corpus(
        ("apple pie", "apple apple banana"),  # d1
        ("banana split", "cherry apple"),  # d2
        ("cherry", "banana cherry cherry cherry"),  # d3
    )
    index = backend.build(docs, {"profile": "elasticsearch"}, None)
    # terms: appl, pie | appl, appl, banana ; banana, split | cherri, appl ; cherri | banana, cherri x3
    # title: lengths 2, 2, 1 -> avgdl 5/3; text: lengths 3, 2, 4 -> avgdl 3; N = 3 in both
    t_avg, x_avg = 5 / 3, 3.0
    title = {
        "d1": lucene_bm25(1, 2, t_avg, df=1, n=3),  # appl
        "d2": lucene_bm25(1, 2, t_avg, df=1, n=3),  # banana
        "d3": 0.0,
    }
    text = {
        "d1": lucene_bm25(2, 3, x_avg, df=2, n=3) + lucene_bm25(1, 3, x_avg, df=2, n=3),
        "d2": lucene_bm25(1, 2, x_avg, df=2, n=3),  # appl
        "d3": lucene_bm25(1, 4, x_avg, df=2, n=3),  # banana
    }
    # numbers, to be read against the formula: idf(df=1) = ln(8/3), idf(df=2) = ln(1.6)
    assert title["d1"] == pytest.approx(math.log(8 / 3) / (1 + 1.2 * (0.25 + 0.75 * 1.2)))
    assert text["d3"] == pytest.approx(math.log(1.6) / (1 + 1.2 * (0.25 + 0.75 * 4 / 3)))
    expected = {d: max(title[d], text[d]) + 0.5 * min(title[d], text[d]) for d in docs}

    fields = index.field_scores("apple banana")
    for i, d in enumerate(index.doc_ids):
        assert fields["title"][i] == pytest.approx(title[d], rel=1e-6)
        assert fields["text"][i] == pytest.approx(text[d], rel=1e-6)
    run = index.search({"q": "apple banana"}, 10)["q"]
    assert run == pytest.approx(expected, rel=1e-6)
    assert list(run) == sorted(expected, key=lambda d: -expected[d])
    # a repeated query term counts again (bool should clauses add up)
    # (d2: "apple" is not in its title, so only its text score doubles)
    again = index.search({"q": "apple apple banana"}, 10)["q"]
    t2, x2 = title["d2"], 2 * text["d2"]
    assert again["d2"] == pytest.approx(max(t2, x2) + 0.5 * min(t2, x2), rel=1e-6)


def test_best_fields_is_max_plus_half_the_rest():
    import numpy as np

    got = backend.best_fields([np.array([1.0, 0.0, 2.0]), np.array([3.0, 0.0, 2.0])], 0.5)
    assert got.tolist() == [3.5, 0.0, 3.0]


def test_profiles_defaults_and_validation():
    assert backend.resolve_settings({})["k1"] == 1.5
    es = backend.resolve_settings({"profile": "elasticsearch", "language": None})
    assert (es["k1"], es["b"], es["language"]) == (1.2, 0.75, "english")
    assert backend.resolve_settings({"profile": "elasticsearch", "k1": 0.9})["k1"] == 0.9
    with pytest.raises(ConfigError, match="Lucene"):
        backend.resolve_settings({"profile": "elasticsearch", "method": "robertson"})
    with pytest.raises(ConfigError, match="profile"):
        backend.resolve_settings({"profile": "solr"})
    with pytest.raises(ConfigError, match="klingon"):
        backend.build(corpus(("", "xyz")), {"language": "klingon"}, None)


def test_elasticsearch_profile_handles_missing_titles_and_unknown_words():
    docs = corpus(("", "the quick brown fox"), ("", "a lazy dog"))
    index = backend.build(docs, {"profile": "elasticsearch"}, None)
    run = index.search({"q1": "lazy dogs", "q2": "zebra", "q3": "the"}, 5)
    assert list(run["q1"]) == ["d2"]
    assert run["q2"] == {} and run["q3"] == {}


# -- languages ----------------------------------------------------------------------------


@pytest.mark.parametrize("profile", backend.PROFILES)
@pytest.mark.parametrize(
    "language, docs, query, hit",
    [
        (
            "german",
            [("", "Die Häuser der Stadt sind alt"), ("", "Ein Baum im Garten")],
            "Haus",
            "d1",
        ),
        ("de", [("", "Ein Baum im Garten"), ("", "Das Haus ist groß")], "Häuser", "d2"),
        (
            "spanish",
            [("", "Las ciudades y las casas"), ("", "Un perro en el parque")],
            "casa",
            "d1",
        ),
        (
            "french",
            [("", "Un chien dans le parc"), ("", "Les maisons de la ville")],
            "maison",
            "d2",
        ),
    ],
)
def test_snowball_stemming_merges_inflections(profile, language, docs, query, hit):
    index = backend.build(corpus(*docs), {"profile": profile, "language": language}, None)
    assert list(index.search({"q": query}, 5)["q"]) == [hit]


@pytest.mark.parametrize("profile", backend.PROFILES)
def test_language_stop_words_and_stemmer_follow_the_language(profile):
    german = backend.build(corpus(("", "Wort")), {"profile": profile, "language": "german"}, None)
    assert german.analyze("Die Häuser und die Kinder") == ["haus", "kind"]
    english = backend.build(corpus(("", "word")), {"profile": profile, "language": None}, None)
    assert english.analyze("The houses") == ["hous"]
    # without stemming inflections stay apart
    plain = backend.build(
        corpus(("", "Die Häuser")),
        {"profile": profile, "language": "german", "stemming": False},
        None,
    )
    assert plain.search({"q": "Haus"}, 5)["q"] == {}


# -- cache ----------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", backend.PROFILES)
def test_second_build_loads_the_cached_index(profile, tmp_path, caplog):
    docs = corpus(
        ("Cats", "cats purr and sleep"), ("Dogs", "dogs bark at cats"), ("", "birds sing")
    )
    queries = {"q1": "cat", "q2": "barking dogs", "q3": "sing"}
    params = {"profile": profile, "language": "english"}
    with caplog.at_level(logging.INFO, logger=LOGGER):
        first = backend.build(docs, params, tmp_path).search(queries, 3)
        assert not any("cache hit" in r.getMessage() for r in caplog.records)
        caplog.clear()
        second = backend.build(docs, params, tmp_path).search(queries, 3)
        assert any("cache hit" in r.getMessage() for r in caplog.records)
    assert second == first
    assert first["q1"] and first["q2"] and first["q3"]
    # one complete index folder, no leftovers from the atomic write
    assert [p.name for p in tmp_path.iterdir()] == [
        f"bm25s-{backend.build(docs, params, None).key}"
    ]


def test_cache_key_follows_corpus_and_every_setting():
    docs = corpus(("Alpha beta", "gamma"))
    key = backend.build(docs, {}, None).key
    assert backend.build(docs, {"language": "english", "k1": 1.5}, None).key == key
    assert backend.build(docs, {"profile": "elasticsearch"}, None).key != key
    assert backend.build(docs, {"k1": 1.2}, None).key != key
    assert backend.build(docs, {"stemming": False}, None).key != key
    assert (
        backend.build(corpus(("Alpha", "beta gamma")), {}, None).key != key
    )  # title/text split matters


# -- real collections -----------------------------------------------------------------------


def _benchmark():
    spec = importlib.util.spec_from_file_location("bm25_profiles", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _need(name: str) -> Path:
    if not (DATA / name / "corpus.jsonl").is_file():
        pytest.skip(f"{DATA / name} not found (shared BEIR data)")
    return DATA / name


@pytest.mark.slow
def test_scifact_plain_bm25s_ndcg10():
    folder = _need("scifact")
    ds = load_beir_folder(folder, "test")
    run = backend.build(ds.corpus, {"language": ds.language}, None).search(ds.queries, 100)
    ndcg = _benchmark().scores(run, ds.qrels)["NDCG@10"]
    print(f"SciFact test, profile=bm25s: NDCG@10 = {ndcg:.4f}")
    assert 0.665 <= ndcg <= 0.69


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["scifact", "nfcorpus"])
def test_elasticsearch_profile_reproduces_the_papers_bm25_row(dataset):
    _need(dataset)
    bench = _benchmark()
    result = bench.measure(DATA, dataset, "elasticsearch")
    paper = bench.PAPER[dataset]
    print(f"{dataset} test, profile=elasticsearch: {result}")
    assert result["beir"]["NDCG@10"] == pytest.approx(paper["NDCG@10"], abs=0.005)
    for metric in ("P@10", "NDCG@3", "MAP@100"):
        assert result["beir"][metric] == pytest.approx(paper[metric], abs=0.01)


@pytest.mark.slow
def test_xquad_r_english_both_profiles():
    folder = _need("xquad-r/en")
    ds = load_beir_folder(folder, "test")
    bench = _benchmark()
    for profile in backend.PROFILES:
        run = backend.build(ds.corpus, {"profile": profile, "language": "en"}, None).search(
            ds.queries, 100
        )
        ndcg = bench.scores(run, ds.qrels)["NDCG@10"]
        print(f"XQuAD-R en, profile={profile}: NDCG@10 = {ndcg:.4f}")
        assert ndcg > 0.8


@pytest.mark.slow  # a fresh interpreter (torch's import)
def test_bm25s_is_imported_on_first_use_and_its_debug_logs_stay_off():
    # loading the catalog (every command) must not pay bm25s's import; its own import sets
    # its logger to DEBUG, which the backend undoes
    import subprocess
    import sys

    code = (
        "import logging, sys\n"
        "from mergekit_ir.plugin_host import catalog\n"
        "catalog()\n"
        "print('bm25s' in sys.modules, 'Stemmer' in sys.modules, 'transformers' in sys.modules)\n"
        "from mergekit_ir_plugins.first_stages import bm25s_backend as b\n"
        "b.lucene_field_index([['a', 'b'], ['b']], 1.2, 0.75)\n"
        "print(logging.getLogger('bm25s').level == logging.WARNING)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "False", "True"]
