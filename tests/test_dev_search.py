"""``tuning.search: halving``: the grid's choice from fewer query × model evaluations.

The search is a pure function over a ``score(point, group, qids)`` callback, so planted
curves (unimodal, flat, noisy) fix its chosen point and its exact evaluation count; the
registry names the YAML path of a bad option; the dry run prices it; one slow run on the
planted toy triplet (tests/alpha_toy.py) goes through the runner.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from alpha_toy import write_registry
from click.testing import CliRunner

from mergekit_ir.errors import ConfigError
from mergekit_ir.experiments.dev_search import cut
from mergekit_ir.experiments.dry_run import count_passes
from mergekit_ir.experiments.registry import load_registry
from mergekit_ir.experiments.splits import Split
from mergekit_ir.results import AlphaAblation, Results
from mergekit_ir.tuning.search import (
    SearchSpec,
    expected_cost,
    fractions,
    parse_search,
    passes,
    run_search,
    survivors,
)

POINTS = [f"{i / 10:g}" for i in range(1, 11)]  # 0.1 … 1
HALVING = SearchSpec("halving")


def planted(curve, queries=40, noise=0.0, seed=0, groups=("d",)):
    """A callback scoring ``curve[point]`` (+ fixed per-(point, query) noise) that counts
    every (point, group, query) it is asked for."""
    rng = np.random.default_rng(seed)
    qids = {g: [f"{g}-q{i:03d}" for i in range(queries)] for g in groups}
    eps = {(p, q): rng.normal(0, noise) for p in curve for g in groups for q in qids[g]}
    asked: list[tuple[str, str, str]] = []

    def score(point, group, ask):
        asked.extend((point, group, q) for q in ask)
        return {q: curve[point] + eps[(point, q)] for q in ask}

    return qids, score, asked


def unimodal(peak=0.4):
    return {p: 0.6 - (float(p) - peak) ** 2 for p in POINTS}


# -- the schedule --------------------------------------------------------------------------------
def test_schedule_halves_the_points_and_doubles_the_queries_until_the_last_round_sees_all():
    assert survivors(10, 0.5) == [10, 5, 3, 2]
    assert fractions(10, HALVING) == [0.125, 0.25, 0.5, 1.0]
    assert survivors(6, 0.5) == [6, 3, 2] and survivors(3, 0.5) == [3, 2]
    assert survivors(2, 0.5) == [2] and survivors(1, 0.5) == [1]
    assert survivors(3, 0.3) == [3]  # keep 1 of 3 at once: one round, on every query
    # share of the grid's evaluations: 10×1/8 + 5×1/8 + 3×1/4 + 2×1/2 = 3.625 of 10
    assert expected_cost(10, HALVING) == pytest.approx(0.3625)
    assert passes(10, HALVING) == 20  # partial passes (10 + 5 + 3 + 2) per dev split
    assert expected_cost(10, SearchSpec()) == 1.0 and passes(10, SearchSpec()) == 10
    assert fractions(6, SearchSpec("halving", start=0.1)) == pytest.approx([0.1, 0.2, 0.4])


# -- planted curves ------------------------------------------------------------------------------
def test_unimodal_curve_picks_the_peak_with_the_exact_evaluation_count():
    qids, score, asked = planted(unimodal(0.42))
    res = run_search(POINTS, qids, score, HALVING)
    assert res.chosen == "0.4" and res.stopped == "all queries"
    # subsets of 40 queries: 5, 10, 20, 40 → 10×5 + 5×5 + 3×10 + 2×20
    assert res.evaluations == 145 == len(asked) and res.grid_evaluations == 400
    assert len(set(asked)) == len(asked)  # a (point, query) is never scored twice
    assert [r.points for r in res.rounds][1:] == [
        ["0.2", "0.3", "0.4", "0.5", "0.6"],
        ["0.3", "0.4", "0.5"],
        ["0.4", "0.5"],
    ]
    assert res.complete() == ["0.4", "0.5"]  # the last round's points saw every query
    grid = run_search(POINTS, qids, planted(unimodal(0.42))[1])
    assert grid.chosen == "0.4" and grid.evaluations == grid.grid_evaluations == 400


def test_a_tie_at_the_cut_eliminates_no_one():
    """0.3 and 0.5 are equally far from the peak 0.4: both go on (3 points in the last round,
    not 2), and the grid's tie-break decides between equals at the end."""
    qids, score, _ = planted(unimodal(0.4))
    res = run_search(POINTS, qids, score, HALVING)
    assert res.chosen == "0.4" and res.rounds[-1].points == ["0.3", "0.4", "0.5"]
    assert res.evaluations == 145 + 20


def test_flat_curve_is_the_full_grid():
    """Every point ties on every subset: nothing is evidence, nothing is eliminated, and the
    choice is the grid's (the first point)."""
    qids, score, _ = planted(dict.fromkeys(POINTS, 0.5))
    res = run_search(POINTS, qids, score, HALVING)
    assert res.chosen == "0.1" == run_search(POINTS, qids, score).chosen
    assert res.evaluations == res.grid_evaluations == 400


@pytest.mark.parametrize("seed", range(8))
def test_noisy_curve_picks_the_grids_point(seed):
    """Per-query noise (sd 0.3, three times the gap between the peak and its neighbours)
    around a peak at 0.7, 200 queries: the first round decides on 25 noisy queries."""
    curve = {p: 0.6 - abs(float(p) - 0.7) for p in POINTS}
    qids, score, _ = planted(curve, queries=200, noise=0.3, seed=seed)
    grid = run_search(POINTS, qids, score)
    res = run_search(POINTS, qids, score, HALVING, seed=seed)
    assert res.chosen == grid.chosen == "0.7"
    assert res.evaluations == 10 * 25 + 5 * 25 + 3 * 50 + 2 * 100  # 725 of 2000


def test_bootstrap_stops_early_when_the_leader_is_clear():
    curve = dict.fromkeys(POINTS, 0.2) | {"0.6": 0.9}
    qids, score, _ = planted(curve, noise=0.01)
    res = run_search(POINTS, qids, score, SearchSpec("halving", confidence=0.95, bootstrap=200))
    assert res.chosen == "0.6" and res.stopped == "bootstrap"
    assert res.evaluations == 10 * 5 and res.rounds[0].margin > 0.6  # gain ≈ 0.7 ± noise
    # a point tied with the leader on every query is never separated from it
    tied = dict.fromkeys(POINTS, 0.2) | {"0.6": 0.9, "0.7": 0.9}
    qids, score, _ = planted(tied)
    res = run_search(POINTS, qids, score, SearchSpec("halving", confidence=0.95, bootstrap=200))
    assert res.chosen == "0.6" and res.stopped == "all queries"
    assert res.rounds[0].margin == 0.0


def test_groups_are_averaged_as_the_dev_rule_does():
    """Mean over dev splits of each split's mean: a small split weighs as much as a big one."""
    value = {("a", "big"): 0.5, ("a", "small"): 1.0, ("b", "big"): 0.8, ("b", "small"): 0.5}
    qids = {"big": [f"b{i}" for i in range(30)], "small": [f"s{i}" for i in range(6)]}

    def score(point, group, ask):
        return {q: value[(point, group)] for q in ask}

    # a: (0.5 + 1.0) / 2 = 0.75 beats b: 0.65 (pooled over queries b would win: 0.74 > 0.58)
    res = run_search(["b", "a"], qids, score, SearchSpec("halving", start=0.5))
    assert res.chosen == "a" == run_search(["b", "a"], qids, score).chosen
    assert res.rounds[0].queries == {"big": 15, "small": 5}  # min_queries 5 for the small one


def test_a_bad_callback_is_an_error_not_a_choice():
    with pytest.raises(ValueError, match="no value for query"):
        run_search(["a", "b"], {"d": ["q1"]}, lambda p, g, q: {}, HALVING)
    with pytest.raises(ValueError, match="nan"):
        run_search(["a", "b"], {"d": ["q1"]}, lambda p, g, q: dict.fromkeys(q, math.nan))


# -- the registry --------------------------------------------------------------------------------
REGISTRY = """
datasets:
  toy: {beir: "quickstart:toy", test: test, dev: dev}
triplets:
  t:
    scorer: {kind: bi-encoder}
    pretrained: quickstart:pretrained
    domain: quickstart:domain
    ir: quickstart:ir
experiments:
  e:
    triplets: [t]
    datasets: [toy]
    merge: {method: task_arithmetic, alpha: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]}
    tuning: TUNING
"""


def registry(tmp_path, tuning: str):
    path = tmp_path / "r.yaml"
    path.write_text(REGISTRY.replace("TUNING", tuning))
    return load_registry(path)


def test_the_registry_reads_the_search(tmp_path):
    assert registry(tmp_path, "{}").experiment("e").search == SearchSpec()
    assert registry(tmp_path, "{search: halving}").experiment("e").search == HALVING
    exp = registry(tmp_path, "{search: {keep: 0.25, confidence: 0.9, min_queries: 3}}")
    assert exp.experiment("e").search == SearchSpec(
        "halving", keep=0.25, confidence=0.9, min_queries=3
    )


@pytest.mark.parametrize(
    ("tuning", "message"),
    [
        ("{search: bisect}", r"^experiments\.e\.tuning\.search\.method: unknown search 'bisect'"),
        ("{search: {keep: 1.5}}", r"^experiments\.e\.tuning\.search\.keep: 1\.5 is outside"),
        ("{search: {keep: 1}}", r"^experiments\.e\.tuning\.search\.keep: 1 is outside \(0, 1\)"),
        ("{search: {start: 0}}", r"^experiments\.e\.tuning\.search\.start: 0 is outside \(0, 1\]"),
        ("{search: {min_queries: 0}}", r"^experiments\.e\.tuning\.search\.min_queries: 0 is"),
        ("{search: {confidence: 1}}", r"^experiments\.e\.tuning\.search\.confidence: 1 is"),
        ("{search: {bootstrap: 0}}", r"^experiments\.e\.tuning\.search\.bootstrap: 0 is outside"),
        ("{search: {keep: x}}", r"^experiments\.e\.tuning\.search\.keep: 'x' is not a float"),
        ("{search: {rounds: 3}}", r"^experiments\.e\.tuning\.search\.rounds: unknown parameter"),
        (
            "{search: {method: grid, keep: 0.5}}",
            r"^experiments\.e\.tuning\.search\.keep: the grid search takes no parameters",
        ),
        ("{search: [halving]}", r"^experiments\.e\.tuning\.search: expected grid, halving"),
        (
            "{search: halving, alpha: {selector: pseudo-queries}}",
            r"^experiments\.e\.tuning\.search: .*α selectors choose α",
        ),
        ("{search: halving, alpha: false}", r"^experiments\.e\.tuning\.search: .*alpha is false"),
    ],
)
def test_search_errors_name_the_yaml_path(tmp_path, tuning, message):
    with pytest.raises(ConfigError, match=message):
        registry(tmp_path, tuning)


def test_parse_search_alone():
    assert parse_search("grid", "p") == SearchSpec()
    with pytest.raises(ConfigError, match=r"^p\.method"):
        parse_search({"method": None}, "p")


def test_the_dry_run_prices_the_search_in_fewer_passes(tmp_path):
    reg = registry(tmp_path, "{search: halving}")
    exp = reg.experiment("e")
    counts = count_passes(reg, exp, "t", ["toy"], ["toy"])
    key = "α search on dev (halving: ≈ 36% of the grid's 10 passes)"
    assert counts[key] == 4 and "α grid on dev" not in counts  # ⌈3.625⌉ full passes, not 10
    assert count_passes(reg, exp, "t", ["toy"], ["toy"], partial=True)[key] == 20
    grid = registry(tmp_path, "{}")
    assert count_passes(grid, grid.experiment("e"), "t", ["toy"], ["toy"])["α grid on dev"] == 10


# -- the runner's pieces ---------------------------------------------------------------------------
def test_cut_keeps_the_queries_asked_and_the_corpus_fingerprint():
    from mergekit_ir import Dataset, Document

    ds = Dataset(
        "d",
        {"x": Document("", "a"), "y": Document("", "b")},
        {"q1": "a", "q2": "b"},
        {"q1": {"x": 1}, "q2": {"y": 1}},
    )
    split = Split(ds, {"q1": {"x": 1.0}, "q2": {"y": 1.0}}, "fs", "dev")
    sub = cut(split, ["q2"])
    assert set(sub.dataset.queries) == set(sub.dataset.qrels) == set(sub.first_stage) == {"q2"}
    assert sub.dataset.fingerprint() == ds.fingerprint() and sub.fs_key == "fs"
    assert sub.dataset.queries_fingerprint() != ds.queries_fingerprint()  # its own cache entry
    assert cut(split, ["q1", "q2"]) is split


def test_results_json_keeps_the_trace_and_the_report_shows_it():
    from mergekit_ir.reports.render import render_alpha_table

    qids, score, _ = planted(unimodal(0.4), queries=12)
    res = run_search(POINTS, qids, score, HALVING)
    abl = AlphaAblation(
        values={"d": {p: 0.5 for p in res.complete()}},
        mean={p: 0.5 for p in res.complete()},
        best=res.chosen,
        order=POINTS,
        search=res.to_json(),
    )
    again = AlphaAblation.from_json(json.loads(json.dumps(abl.to_json())))
    assert again == abl and again.search["evaluations"] == res.evaluations
    assert "search" not in AlphaAblation(values={"d": {"0.1": 0.5}}).to_json()  # grid: as before
    text = render_alpha_table(Results(experiment="e", alpha_ablation={"t": abl}))
    assert "| 0.1 | – |" in text and "| 0.4 | **0.500** |" in text  # every point has a row
    assert f"halving scored {res.evaluations} of the full grid's 120 query × model" in text


@pytest.mark.slow
def test_a_run_with_halving_finds_the_planted_alpha_in_fewer_evaluations(tmp_path):
    """The toy triplet whose only good α is 0.5 (tests/alpha_toy.py), 12 dev queries."""
    from mergekit_ir.cli import main

    reg = write_registry(tmp_path, "{search: {method: halving, min_queries: 2}}")
    out = tmp_path / "out"
    args = ["run", "toy", "--registry", str(reg), "--out", str(out), "--cache-dir",
            str(tmp_path / "cache")]  # fmt: skip
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    raw = json.loads((out / "results.json").read_text())
    abl = raw["alpha_ablation"]["toy-planted"]
    search = abl["search"]
    assert abl["best"] == search["chosen"] == "0.5"
    # fewer than the grid; how many fewer depends on the random query subsets: the toy's
    # planted scores tie on most small subsets, and ties keep every tied point
    assert search["evaluations"] < search["grid_evaluations"] == 120
    assert "successive halving:" in res.output and "tuned α = 0.5" in res.output
    assert "Search (toy-planted): halving scored" in (out / "alpha.md").read_text()
    dry = CliRunner().invoke(main, ["run", "toy", "--registry", str(reg), "--dry-run"])
    assert "α search on dev (halving: ≈ 36% of the grid's 10 passes)" in dry.output
    # warm: every subset pass comes from the cache
    again = CliRunner().invoke(main, args, catch_exceptions=False)
    assert again.exit_code == 0, again.output
    warm = json.loads((out / "results.json").read_text())
    assert warm["manifest"]["cache"]["misses"] == 0 and "pass 1/" not in again.output
    assert warm["alpha_ablation"] == raw["alpha_ablation"]
