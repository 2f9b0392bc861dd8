"""α selectors: the statistics by hand, pseudo-query construction, registry errors, and every
selector on tiny triplets with a planted best α (tests/alpha_toy.py)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from alpha_toy import write_registry
from click.testing import CliRunner

from mergekit_ir import ConfigError, Dataset, Document, MergeIRError
from mergekit_ir.cli import main
from mergekit_ir.experiments.registry import load_registry
from mergekit_ir.experiments.selection import unjudged
from mergekit_ir.results import Results
from mergekit_ir.tuning.bootstrap import MAX_BOOTSTRAP, argmax, bootstrap, kendall_tau, percentile
from mergekit_ir.tuning.selector import BOOTSTRAP, SelectionContext, alpha_value
from mergekit_ir_plugins.alpha_selectors.consensus import rrf_top
from mergekit_ir_plugins.alpha_selectors.dev import select_dev
from mergekit_ir_plugins.alpha_selectors.pseudo_queries import build_pseudo_queries

# -- statistics, by hand ------------------------------------------------------------------------


def test_argmax_ties_go_to_the_earlier_alpha():
    assert argmax({"0.1": 0.5, "0.2": 0.7, "0.3": 0.7}, ["0.1", "0.2", "0.3"]) == "0.2"
    assert argmax({"0.1": 0.5, "0.2": 0.7, "0.3": 0.7}, ["0.3", "0.2", "0.1"]) == "0.3"


def test_percentile_interpolates():
    assert percentile([0.0, 1.0, 2.0, 3.0], 0.5) == 1.5
    assert percentile([0.0, 1.0, 2.0, 3.0], 0.0) == 0.0
    assert percentile([0.0, 1.0, 2.0, 3.0], 1.0) == 3.0


def test_kendall_tau_by_hand():
    x = {"a": 1.0, "b": 2.0, "c": 3.0}
    assert kendall_tau(x, {"a": 1.0, "b": 2.0, "c": 3.0}) == 1.0
    assert kendall_tau(x, {"a": 3.0, "b": 2.0, "c": 1.0}) == -1.0
    # pairs ab: +, ac: +, bc: - -> (2 - 1) / 3
    assert kendall_tau(x, {"a": 1.0, "b": 3.0, "c": 2.0}) == pytest.approx(1 / 3)
    assert kendall_tau(x, {"a": 1.0, "b": 1.0, "c": 1.0}) is None
    assert kendall_tau({"a": 1.0}, {"a": 2.0}) is None


def test_bootstrap_with_a_constant_gain_has_a_point_interval():
    values = {"g": {"0.5": {"q1": 1.0, "q2": 1.0}, "1": {"q1": 0.5, "q2": 0.5}}}
    base = {"g": {"q1": 0.25, "q2": 0.25}}
    r = bootstrap(values, base, ["0.5", "1"], "0.5", {"0.5": 0.5, "1": 1.0}, samples=200)
    assert r.gain == 0.75 and r.gain_interval == (0.75, 0.75)
    assert r.alpha_interval == (0.5, 0.5) and r.stability == 1.0


def test_bootstrap_tails_and_ties_by_hand():
    # q1 gains +0.5 at α = 0.5, q2 loses 0.4: a resample's mean gain is +0.5 (both q1, p = 1/4),
    # +0.05 (p = 1/2) or -0.4 (both q2, p = 1/4), so the 95 % tails are exactly -0.4 and +0.5;
    # α = 0.5 and α = 1 tie on q2, and a tie goes to the earlier α: every resample picks 0.5
    values = {"g": {"0.5": {"q1": 1.0, "q2": 0.1}, "1": {"q1": 0.2, "q2": 0.1}}}
    base = {"g": {"q1": 0.5, "q2": 0.5}}
    r = bootstrap(values, base, ["0.5", "1"], "0.5", {"0.5": 0.5, "1": 1.0}, samples=2000)
    assert r.gain == pytest.approx(0.05)
    assert r.gain_interval == pytest.approx((-0.4, 0.5))
    assert r.alpha_interval == (0.5, 0.5) and r.stability == 1.0
    again = bootstrap(values, base, ["0.5", "1"], "0.5", {"0.5": 0.5, "1": 1.0}, samples=2000)
    assert again == r  # seeded


def test_bootstrap_is_vectorised():
    # 10,000 resamples of 300 queries × 10 α: ~0.2 s vectorised (the per-query Python loop
    # it replaces took ~8 s); the bound is loose for a loaded machine
    import random
    import time

    rng = random.Random(0)
    order = [f"{i / 10:g}" for i in range(1, 11)]
    values = {"g": {a: {f"q{j}": rng.random() for j in range(300)} for a in order}}
    base = {"g": {f"q{j}": rng.random() for j in range(300)}}
    start = time.perf_counter()
    r = bootstrap(values, base, order, "0.5", {a: float(a) for a in order}, samples=10_000)
    assert time.perf_counter() - start < 3.0
    assert 0.1 <= r.alpha_interval[0] <= r.alpha_interval[1] <= 1.0
    assert r.gain_interval[0] < r.gain < r.gain_interval[1]


def test_bootstrap_samples_are_capped():
    assert BOOTSTRAP.name == "bootstrap" and BOOTSTRAP.max == MAX_BOOTSTRAP == 100_000
    with pytest.raises(
        ConfigError,
        match=r"^experiments\.e\.tuning\.alpha\.bootstrap: 1000000000 is outside \[0, 100000\]$",
    ):
        BOOTSTRAP.check_scalar(10**9, "experiments.e.tuning.alpha.bootstrap")
    with pytest.raises(ValueError, match="outside"):  # refused at once, not run
        bootstrap({"g": {"1": {"q": 1.0}}}, {"g": {"q": 0.0}}, ["1"], "1", {}, samples=10**9)
    # a context built in code is held to the same cap
    with pytest.raises(ConfigError, match=r"^selector t: bootstrap: 1000000000 is outside"):
        _ctx(False, samples=10**9)


def test_bootstrap_beyond_the_cap_is_a_validation_error(tmp_path):
    with pytest.raises(MergeIRError) as e:
        load_registry(
            _registry(tmp_path, "{alpha: {selector: pseudo-queries, bootstrap: 1000000000}}")
        )
    assert (
        str(e.value) == "experiments.toy.tuning.alpha.bootstrap: 1000000000 is outside [0, 100000]"
    )


def _ctx(guard: bool, samples: int = 500, **kw) -> SelectionContext:
    def never(*_):
        raise AssertionError("not used")

    return SelectionContext(**{
        **dict(
            label="t", alphas=(0.5, 1.0), objective="NDCG@10", datasets=("d",), seed=0,
            guard=guard, samples=samples, confidence=0.95, transfer=False, cache_dir=Path("."),
            corpus=never, dev=never, make_split=never, ranking=never, score=never,
        ),
        **kw,
    })  # fmt: skip


def test_dev_guard_without_a_dev_split_says_so():
    lines: list[str] = []
    ctx = _ctx(True, label="dev+guard", dev=lambda d: None, echo=lines.append)
    choices = select_dev(ctx, {})
    c = choices["d"]
    assert c.alpha == "1" and not c.guarded and c.interval is None and c.gain is None
    assert c.diagnostics["no_dev_split"] and "no dev split" in c.diagnostics["note"]
    assert len(lines) == 1 and lines[0].startswith("  warning: dev+guard on d: no dev split")
    assert alpha_value("1", (0.5,)) == 1.0  # the Θ' row may use α = 1 off the grid
    # without the guard, nothing to say: the dataset keeps α = 1 as it always did
    lines.clear()
    assert select_dev(_ctx(False, dev=lambda d: None, echo=lines.append), {}) == {} and not lines


def test_dev_guard_notes_only_the_datasets_without_a_dev_split():
    lines: list[str] = []
    ctx = _ctx(
        True, label="dev+guard", datasets=("a", "b"), echo=lines.append,
        dev=lambda d: "split" if d == "a" else None,
        score=lambda a, split: {"q1": 1.0 if a == 0.5 else 0.5, "q2": 0.9 if a == 0.5 else 0.8},
    )  # fmt: skip
    choices = select_dev(ctx, {})
    assert list(choices) == ["a", "b"]
    assert choices["a"].alpha == "0.5" and "no_dev_split" not in choices["a"].diagnostics
    assert choices["b"].alpha == "1" and choices["b"].diagnostics["no_dev_split"]
    assert len(lines) == 1 and "dev+guard on b:" in lines[0]
    # tuning.transfer: the dev α serves b too, and there is nothing to warn about
    lines.clear()
    moved = select_dev(dataclasses.replace(ctx, transfer=True), {})
    assert moved["b"] == moved["a"] and not lines


def test_guard_returns_zero_unless_the_gain_is_surely_positive():
    # q1 gains 0.5 at α = 0.5, q2 loses 0.4: the gain's interval straddles 0
    values = {"d": {"0.5": {"q1": 1.0, "q2": 0.1}, "1": {"q1": 0.2, "q2": 0.1}}}
    base = {"d": {"q1": 0.5, "q2": 0.5}}
    plain, guarded = _ctx(False).choose(values, base), _ctx(True).choose(values, base)
    assert plain.alpha == "0.5" and not plain.guarded
    assert plain.gain == pytest.approx(0.05) and plain.gain_interval[0] < 0
    assert guarded.alpha == "0" and guarded.guarded and guarded.raw_alpha == "0.5"
    sure = {"d": {"0.5": {"q1": 1.0, "q2": 0.9}, "1": {"q1": 0.2, "q2": 0.1}}}
    assert _ctx(True).choose(sure, base).alpha == "0.5"


def test_alpha_choice_round_trips_through_json():
    c = _ctx(True).choose(
        {"d": {"0.5": {"q1": 1.0}, "1": {"q1": 0.2}}}, {"d": {"q1": 0.5}}, {"n": 3}
    )
    raw = Results(alpha_selection={}).to_json()
    assert "alpha_selection" not in raw  # default runs keep results.json as before
    from mergekit_ir.results import AlphaChoice

    assert AlphaChoice.from_json(json.loads(json.dumps(c.to_json()))) == c


# -- pseudo-queries -----------------------------------------------------------------------------

CORPUS = {
    f"d{i}": Document(
        title=f"title words {i}", text=f"First sentence {i} here. Second one {i} there. Third."
    )
    for i in range(20)
}
CORPUS["notitle"] = Document(title="", text="only a body with several words in it")


@pytest.mark.parametrize("source", ["title", "ict", "crop"])
def test_pseudo_queries_are_deterministic_under_a_seed(source):
    a = build_pseudo_queries(CORPUS, source, 5, seed=0, span=3)
    assert a == build_pseudo_queries(CORPUS, source, 5, seed=0, span=3)
    assert a != build_pseudo_queries(CORPUS, source, 5, seed=1, span=3)
    queries, qrels, changed = a
    assert len(queries) == 5 and set(qrels) == set(queries)
    for qid, rel in qrels.items():
        (did,) = rel
        assert queries[qid] not in changed[did].full_text  # removed from that pair's document


def test_title_pseudo_queries_use_titles_and_drop_them():
    queries, qrels, changed = build_pseudo_queries(CORPUS, "title", 100, seed=0)
    assert len(queries) == 20  # the untitled document gives none
    for qid, rel in qrels.items():
        (did,) = rel
        assert queries[qid] == CORPUS[did].title and changed[did].title == ""
        assert changed[did].text == CORPUS[did].text


def test_pseudo_queries_never_see_test_queries_or_qrels():
    a = Dataset("x", CORPUS, {"q1": "title words 3"}, {"q1": {"d3": 1}})
    b = Dataset("x", CORPUS, {"other": "nothing"}, {"other": {"d7": 2}})
    assert unjudged(a).qrels == {} and unjudged(a).queries == a.queries
    assert build_pseudo_queries(unjudged(a).corpus, "title", 10, 0) == build_pseudo_queries(
        unjudged(b).corpus, "title", 10, 0
    )


def test_rrf_top_by_hand():
    r1 = {"q": {"a": 3.0, "b": 2.0, "c": 1.0}}
    r2 = {"q": {"b": 9.0, "a": 8.0}}
    # a: 1/61 + 1/62, b: 1/62 + 1/61 (tie: by id), c: 1/63
    assert rrf_top([r1, r2], "q", 2, 60) == {"a": 1, "b": 1}
    assert rrf_top([r1, r2], "q", 1, 60) == {"a": 1}
    # c: 1/63 + 1/61 beats a: 1/61
    assert rrf_top([r1, {"q": {"c": 1.0}}], "q", 1, 60) == {"c": 1}
    assert rrf_top([r1], "missing", 3, 60) == {}


# -- registry -----------------------------------------------------------------------------------


def _registry(tmp_path: Path, tuning: str) -> Path:
    reg = tmp_path / "reg.yaml"
    reg.write_text(
        "datasets:\n  toy: {beir: quickstart:toy}\n"
        "triplets:\n  t: {scorer: {kind: bi-encoder}, pretrained: a, domain: b, ir: c}\n"
        f"experiments:\n  toy: {{triplets: [t], datasets: [toy], tuning: {tuning}}}\n"
    )
    return reg


@pytest.mark.parametrize(
    ("tuning", "where", "says"),
    [
        ("{alpha: {selector: nope}}", "experiments.toy.tuning.alpha.selector", "unknown α selector"),
        ("{alpha: {selector: pseudo-queries, source: abstract}}",
         "experiments.toy.tuning.alpha.source", "not one of title, ict, crop"),
        ("{alpha: {selector: pseudo-queries, n: 0}}", "experiments.toy.tuning.alpha.n", "outside"),
        ("{alpha: {selector: dev, depth: 3}}", "experiments.toy.tuning.alpha.depth",
         "unknown parameter"),
        ("{alpha: {selector: dev, guard: maybe}}", "experiments.toy.tuning.alpha.guard", "true or false"),
        ("{alpha: {selector: dev, confidence: 1.5}}", "experiments.toy.tuning.alpha.confidence",
         "outside"),
        ("{alpha: {selector: dev}, compare: [{selector: consensus, k: -1}]}",
         "experiments.toy.tuning.compare[0].k", "outside"),
        ("{alpha: {selector: dev}, compare: [{selector: dev}]}",
         "experiments.toy.tuning.compare[0]", "already given"),
        ("{alpha: true, compare: [{selector: dev}]}", "experiments.toy.tuning.compare",
         "needs tuning.alpha"),
        ("{alpha: 3}", "experiments.toy.tuning.alpha", "neither true/false"),
    ],
)  # fmt: skip
def test_bad_selector_config_is_one_line_naming_the_yaml_path(tmp_path, tuning, where, says):
    with pytest.raises(MergeIRError) as e:
        load_registry(_registry(tmp_path, tuning))
    msg = str(e.value)
    assert msg.startswith(where + ":") and says in msg and "\n" not in msg


def test_selector_config_is_read(tmp_path):
    reg = load_registry(
        _registry(
            tmp_path,
            "{alpha: {selector: pseudo-queries, source: ict, n: 50, guard: true},"
            " compare: [{selector: dev}, {selector: consensus, depth: 5}]}",
        )
    )
    specs = reg.experiment("toy").alpha_selectors
    assert [s.label for s in specs] == ["pseudo-queries:ict+guard", "dev", "consensus"]
    assert specs[0].params == {"source": "ict", "n": 50, "seed": 0, "span": 10}
    assert specs[2].params == {"depth": 5, "k": 60}
    assert load_registry(_registry(tmp_path, "{}")).experiment("toy").alpha_selectors == ()


# -- selectors on tiny triplets with a planted best α -------------------------------------------


def _run(reg: Path, out: Path) -> dict:
    res = CliRunner().invoke(
        main,
        ["run", "toy", "--registry", str(reg), "--out", str(out), "--cache-dir",
         str(out.parent / "cache"), "-q"],
        catch_exceptions=False,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    return json.loads((out / "results.json").read_text())


def _choice(raw: dict, triplet: str, selector: str) -> dict:
    return raw["alpha_selection"][triplet]["choices"][selector]["toy"]


def _merged_best_alpha(raw: dict) -> str:
    row = next(r for r in raw["sections"][0]["rows"] if r["key"] == "merged@best")
    return row["alpha"]["toy"]


@pytest.mark.slow
def test_dev_and_consensus_on_the_planted_triplet(tmp_path):
    reg = write_registry(
        tmp_path, "{alpha: {selector: dev, guard: true}, compare: [{selector: consensus}]}"
    )
    raw = _run(reg, tmp_path / "out")
    dev = _choice(raw, "toy-planted", "dev+guard")
    assert dev["alpha"] == "0.5" and not dev["guarded"] and dev["gain_interval"][0] > 0
    assert dev["interval"] == [0.5, 0.5]
    assert _merged_best_alpha(raw) == "0.5"
    sel = raw["alpha_selection"]["toy-planted"]
    test = sel["test_curve"]["toy"]
    assert max(test, key=test.get) == "0.5" and test["0.5"] == 1.0  # the planted optimum
    assert sel["dev_alpha"] == {"toy": "0.5"}
    # consensus is pulled to its references (ΘT, Θ'(1), BM25): it picks an α, with an interval
    cons = _choice(raw, "toy-planted", "consensus")
    assert cons["alpha"] in sel["choices"]["consensus"]["toy"]["curve"]
    assert cons["interval"][0] <= float(cons["alpha"]) <= cons["interval"][1]
    # the selection report re-renders byte for byte from results.json
    out = tmp_path / "out"
    before = {f: (out / f).read_bytes() for f in ("selection.md", "selection.png", "results.md")}
    assert (
        "| toy-planted | toy | dev+guard (Θ' row) | 0.5 | [0.5, 0.5] |"
        in before["selection.md"].decode()
    )
    res = CliRunner().invoke(main, ["report", str(out)], catch_exceptions=False)
    assert res.exit_code == 0
    for f, data in before.items():
        assert (out / f).read_bytes() == data, f
    parsed = Results.from_json(raw).to_json()
    assert json.dumps(parsed["alpha_selection"], sort_keys=True) == json.dumps(
        raw["alpha_selection"], sort_keys=True
    )


@pytest.mark.slow
def test_pseudo_queries_find_the_planted_alpha_without_labels(tmp_path):
    reg = write_registry(
        tmp_path, "{alpha: {selector: pseudo-queries, source: title}}", titled=True
    )
    raw = _run(reg, tmp_path / "out")
    c = _choice(raw, "toy-planted", "pseudo-queries:title")
    assert c["alpha"] == "0.5" and c["diagnostics"]["pseudo_queries"] == 12
    assert max(c["curve"], key=c["curve"].get) == "0.5"
    assert _merged_best_alpha(raw) == "0.5"
    cached = list((tmp_path / "cache" / "pseudo-queries").glob("*.json"))
    assert len(cached) == 1
    again = _run(reg, tmp_path / "out")  # from the cache: the same choice
    assert _choice(again, "toy-planted", "pseudo-queries:title") == c


@pytest.mark.slow
def test_guard_returns_zero_on_a_harmful_vector(tmp_path):
    reg = write_registry(
        tmp_path,
        "{alpha: {selector: dev, guard: true}, compare: [{selector: dev},"
        " {selector: consensus, guard: true}]}",
        kind="harmful",
    )
    raw = _run(reg, tmp_path / "out")
    assert _choice(raw, "toy-harmful", "dev")["alpha"] == "0.1"  # the grid's least harm
    for label in ("dev+guard", "consensus+guard"):
        c = _choice(raw, "toy-harmful", label)
        assert c["alpha"] == "0" and c["guarded"], label
    assert _merged_best_alpha(raw) == "0"
    test = raw["alpha_selection"]["toy-harmful"]["test_curve"]["toy"]
    assert test["0"] == 1.0 and test["1"] < 0.5


@pytest.mark.slow
def test_selector_dev_keeps_todays_alpha(tmp_path):
    plain = _run(write_registry(tmp_path / "a", "{}"), tmp_path / "a" / "out")
    dev = _run(write_registry(tmp_path / "b", "{alpha: {selector: dev}}"), tmp_path / "b" / "out")
    assert "alpha_selection" not in plain
    assert _merged_best_alpha(plain) == _merged_best_alpha(dev) == "0.5"
    assert plain["alpha_ablation"] == dev["alpha_ablation"]
    assert _choice(dev, "toy-planted", "dev")["curve"] == {
        a: round(v, 6) for a, v in plain["alpha_ablation"]["toy-planted"]["mean"].items()
    }


@pytest.mark.slow
def test_dev_guard_on_a_dataset_without_dev_split_says_so_in_the_run(tmp_path):
    reg = write_registry(tmp_path, "{alpha: {selector: dev, guard: true}}")
    reg.write_text(reg.read_text().replace(", dev: dev}", "}"))
    res = CliRunner().invoke(
        main,
        ["run", "toy", "--registry", str(reg), "--out", str(tmp_path / "out"), "--cache-dir",
         str(tmp_path / "cache"), "-q"],
        catch_exceptions=False,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    warnings = [line for line in res.output.splitlines() if "warning: dev+guard" in line]
    assert warnings == [
        "  warning: dev+guard on toy: no dev split: the guard had no gain to check, so α = 1 "
        "(zero-shot) as without a selector; give the dataset a dev split, set tuning.transfer: "
        "true, or use a label-free selector (pseudo-queries, consensus) with guard: true"
    ]
    raw = json.loads((tmp_path / "out" / "results.json").read_text())
    c = _choice(raw, "toy-planted", "dev+guard")
    assert c["alpha"] == "1" and c["diagnostics"]["no_dev_split"] and not c["guarded"]
    assert _merged_best_alpha(raw) == "1"
    assert (
        "| toy-planted | toy | dev+guard (Θ' row) | 1 |"
        in (tmp_path / "out" / "selection.md").read_text()
    )
