"""Evaluation, fusion, significance and report rendering, against independent code.

ir_measures (pytrec_eval, i.e. trec_eval) is the reference for the metrics;
scipy's ttest_rel for the p-values. trec_eval breaks score ties by document id
descending and ranx by a salted hash, so ``evaluate`` re-ranks runs the trec_eval
way first; the tie cases below check exactly that.
"""

from __future__ import annotations

import copy
import math
import struct
from pathlib import Path

import ir_measures
import numpy as np
import pytest
from ir_measures import AP, RR, P, R, nDCG
from scipy import stats

from mergekit_ir.errors import ConfigError
from mergekit_ir.evaluation.fusion import fuse, tune_fusion
from mergekit_ir.evaluation.metrics import DEFAULT_METRICS, evaluate, mean_scores, ranx_metric
from mergekit_ir.evaluation.significance import bonferroni, mark_improvements, p_values
from mergekit_ir.reports.render import (
    render_alpha_table,
    render_csv,
    render_latex,
    render_markdown,
    write_reports,
)
from mergekit_ir.results import Results

IRM = {
    "P@10": P @ 10,
    "NDCG@3": nDCG @ 3,
    "NDCG@10": nDCG @ 10,
    "MAP@100": AP @ 100,
    "R@100": R @ 100,
    "MRR@10": RR @ 10,
}
SCIFACT = Path(__file__).resolve().parents[2] / "shared/data/beir/scifact"


def _synthetic(ties: bool) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, float]]]:
    """Graded qrels (0-2) over 12 queries; q11 is missing from the run."""
    rng = np.random.default_rng(7)
    qrels: dict[str, dict[str, int]] = {}
    run: dict[str, dict[str, float]] = {}
    for q in range(12):
        qid = f"q{q}"
        docs = [f"d{q}_{i}" for i in range(30)]
        qrels[qid] = {d: int(rng.integers(0, 3)) for d in rng.choice(docs, 8, replace=False)}
        qrels[qid][docs[0]] = 2  # at least one relevant document
        if q == 11:
            continue
        scores = rng.random(25)
        if ties:
            scores = np.round(scores * 4) / 4  # only five distinct values
        run[qid] = {d: float(s) for d, s in zip(rng.permutation(docs)[:25], scores, strict=True)}
    run["extra"] = {"x": 1.0}  # not judged: ignored
    return qrels, run


def _irm_per_query(qrels, run, names):
    out: dict[str, dict[str, float]] = {n: {} for n in names}
    by_measure = {IRM[n]: n for n in names}
    for m in ir_measures.iter_calc(list(by_measure), qrels, run):
        out[by_measure[m.measure]][m.query_id] = m.value
    return out


def _check_against_ir_measures(qrels, run, names):
    ours = evaluate(qrels, run, names)
    ref = _irm_per_query(qrels, run, names)
    for n in names:
        assert set(ours[n]) == set(qrels), n
        for q in qrels:
            # trec_eval has no line for a query without results; it scores 0 (as with -c).
            assert ours[n][q] == pytest.approx(ref[n].get(q, 0.0), abs=1e-4), (n, q)
        full = sum(ref[n].get(q, 0.0) for q in qrels) / len(qrels)
        assert mean_scores(ours)[n] == pytest.approx(full, abs=1e-4), n


@pytest.mark.parametrize("ties", [False, True])
def test_metrics_match_ir_measures(ties):
    qrels, run = _synthetic(ties)
    names = [*DEFAULT_METRICS, "R@100"]
    # ir_measures computes RR@10 with its msmarco provider, which breaks ties its own
    # way (not trec_eval's): compare it on the tie-free run only.
    _check_against_ir_measures(qrels, run, names if ties else [*names, "MRR@10"])


def test_aggregate_matches_ir_measures_on_answered_queries():
    qrels, run = _synthetic(ties=False)
    answered = {q: v for q, v in qrels.items() if q in run}
    agg = ir_measures.calc_aggregate([IRM[n] for n in DEFAULT_METRICS], answered, run)
    ours = mean_scores(evaluate(answered, run, DEFAULT_METRICS))
    for n in DEFAULT_METRICS:
        assert ours[n] == pytest.approx(agg[IRM[n]], abs=1e-4)


def test_missing_query_scores_zero_and_names_are_kept():
    qrels, run = _synthetic(ties=False)
    res = evaluate(qrels, run, ["p@10", "nDCG@10"])
    assert set(res) == {"p@10", "nDCG@10"}
    assert res["p@10"]["q11"] == 0.0 and res["nDCG@10"]["q11"] == 0.0
    assert "extra" not in res["p@10"]
    empty = evaluate(qrels, {}, ["P@10"])
    assert set(empty["P@10"].values()) == {0.0}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("P@10", "precision@10"),
        ("NDCG@10", "ndcg@10"),
        ("ndcg@3", "ndcg@3"),
        ("MAP@100", "map@100"),
        ("R@100", "recall@100"),
        ("MRR@10", "mrr@10"),
        ("map", "map"),
        ("AP@100", "map@100"),
    ],
)
def test_ranx_metric(name, expected):
    assert ranx_metric(name) == expected


@pytest.mark.parametrize("name", ["BLEU@4", "P@", "P@0", "ndcg@ten", ""])
def test_ranx_metric_unknown(name):
    with pytest.raises(ConfigError, match="NDCG@k"):
        ranx_metric(name)


@pytest.mark.slow
def test_metrics_match_ir_measures_on_scifact_bm25():
    if not SCIFACT.is_dir():
        pytest.skip(f"{SCIFACT} not present")
    from mergekit_ir.evaluation.datasets import load_beir_folder
    from mergekit_ir.params import check_params
    from mergekit_ir.plugin_host import catalog

    ds = load_beir_folder(SCIFACT, split="test")
    fs = catalog().first_stage("bm25s")
    idx = fs.build(ds.corpus, check_params(fs.params, {}, "x", "bm25s"), None)
    run = idx.search(ds.queries, 100)
    _check_against_ir_measures(ds.qrels, run, list(DEFAULT_METRICS))


# --- significance -------------------------------------------------------------------------------


def _pair_with_p(target_p: float, n: int = 40, seed: int = 0) -> tuple[dict, dict]:
    """Baseline and candidate per-query scores whose paired t-test p is ``target_p``."""
    rng = np.random.default_rng(seed)
    base = 0.4 + 0.2 * rng.random(n)
    noise = rng.normal(size=n)
    noise = 0.05 * (noise - noise.mean())
    shift = stats.t.ppf(1 - target_p / 2, n - 1) * noise.std(ddof=1) / math.sqrt(n)
    cand = base + shift + noise
    qids = [f"q{i}" for i in range(n)]
    return dict(zip(qids, base.tolist(), strict=True)), dict(zip(qids, cand.tolist(), strict=True))


def test_p_values_is_scipy_paired_t_test():
    b, c = _pair_with_p(0.003)
    q = sorted(b)
    expected = stats.ttest_rel([b[k] for k in q], [c[k] for k in q]).pvalue
    assert p_values(b, c) == pytest.approx(expected, rel=1e-12)
    assert p_values(b, c) == pytest.approx(0.003, rel=1e-6)
    assert p_values(b, b) == 1.0  # identical: NaN in scipy, never significant here
    with pytest.raises(ConfigError):
        p_values(b, c, test="wilcoxon")


@pytest.mark.slow  # ranx.compare's own numba JIT takes seconds
def test_p_values_agree_with_ranx_compare():
    from ranx import Qrels, Run, compare

    qrels, run_a = _synthetic(ties=False)
    rng = np.random.default_rng(3)
    run_b = {
        q: {d: s + 0.3 * float(rng.random()) for d, s in docs.items()} for q, docs in run_a.items()
    }
    qrels = {q: v for q, v in qrels.items() if q in run_a}
    run_a = {q: run_a[q] for q in qrels}
    run_b = {q: run_b[q] for q in qrels}
    metrics = ["NDCG@10", "MAP@100"]
    rq = Qrels.from_dict(qrels)
    for test in ("student", "fisher"):
        report = compare(
            rq,
            [Run.from_dict(run_a, name="a"), Run.from_dict(run_b, name="b")],
            [ranx_metric(m) for m in metrics],
            stat_test=test,
        )
        ea, eb = evaluate(qrels, run_a, metrics), evaluate(qrels, run_b, metrics)
        for m in metrics:
            theirs = report.comparisons["a", "b"][ranx_metric(m)]["p_value"]
            ours = p_values(ea[m], eb[m], test=test)
            if test == "student":
                assert ours == pytest.approx(theirs, abs=1e-12), m
            else:  # ranx's draws are not reproducible: agree within Monte-Carlo error
                assert abs(ours - theirs) < 0.07, m
                assert p_values(ea[m], eb[m], test=test) == ours  # ours is seeded


def test_bonferroni():
    assert bonferroni(0.01, 2) == 0.005
    assert bonferroni(0.01, 0) == 0.01


def _cell(per_query: dict[str, float]) -> dict:
    return {
        "mean": sum(per_query.values()) / len(per_query),
        "per_query": per_query,
        "significant": False,
    }


def test_mark_improvements_at_the_bonferroni_boundary():
    threshold = bonferroni(0.01, 2)  # two candidates per column
    best, below = _pair_with_p(threshold * 0.999, seed=1)
    _, above = _pair_with_p(threshold * 1.001, seed=1)
    q = sorted(best)
    for cand, side in ((below, -1), (above, 1)):  # independent check of the construction
        p = stats.ttest_rel([best[k] for k in q], [cand[k] for k in q]).pvalue
        assert (p - threshold) * side > 0
    weak = {k: v - 0.1 for k, v in best.items()}
    table = {
        "metrics": ["NDCG@10"],
        "datasets": ["scifact"],
        "sections": [
            {
                "triplet": "t",
                "rows": [
                    {"key": "bm25", "cells": {"scifact": {"NDCG@10": _cell(weak)}}},
                    {"key": "ir", "cells": {"scifact": {"NDCG@10": _cell(best)}}},
                    {"key": "merged@1", "cells": {"scifact": {"NDCG@10": _cell(below)}}},
                    {"key": "merged@best", "cells": {"scifact": {"NDCG@10": _cell(above)}}},
                ],
            }
        ],
    }
    untouched = Results.from_json(copy.deepcopy(table))
    table = Results.from_json(table)
    kw = {
        "baselines": ["bm25", "ir"],
        "candidates": ["merged@1", "merged@best"],
        "metrics": ["NDCG@10"],
    }
    mark_improvements(table, **kw)
    rows = {r.key: r.cell("scifact", "NDCG@10") for r in table.sections[0].rows}
    assert rows["merged@1"].significant is True
    assert rows["merged@best"].significant is False  # p < 0.01 but not < 0.01 / 2
    assert rows["merged@1"].compared_to == "ir"
    assert rows["merged@best"].p_value == pytest.approx(threshold * 1.001, rel=1e-6)
    assert rows["bm25"].significant is False and rows["bm25"].to_json().get("p_value") is None

    section = untouched.sections[0]  # a single section works too (the runner passes one)
    mark_improvements(section, correction="none", **kw)
    rows = {r.key: r.cell("scifact", "NDCG@10") for r in section.rows}
    assert rows["merged@1"].significant and rows["merged@best"].significant
    assert section.significance.correction == "none"
    assert "p < 0.01)" in render_markdown(untouched) and "Bonferroni" not in render_markdown(
        untouched
    )


def test_explicit_bonferroni_comparisons_set_the_threshold():
    """`comparisons: 3` (the authors' 0.01/3): a p between 0.01/3 and 0.01/2 is no longer significant."""
    best, cand = _pair_with_p(0.004, seed=2)  # < 0.01/2, > 0.01/3
    weak = {k: v - 0.1 for k, v in best.items()}

    def table():
        return {
            "metrics": ["NDCG@10"],
            "datasets": ["d"],
            "sections": [
                {
                    "triplet": "t",
                    "rows": [
                        {"key": "bm25", "cells": {"d": {"NDCG@10": _cell(weak)}}},
                        {"key": "ir", "cells": {"d": {"NDCG@10": _cell(best)}}},
                        {"key": "merged@1", "cells": {"d": {"NDCG@10": _cell(cand)}}},
                        {"key": "merged@best", "cells": {"d": {"NDCG@10": _cell(weak)}}},
                    ],
                }
            ],
        }

    kw = {
        "baselines": ["bm25", "ir"],
        "candidates": ["merged@1", "merged@best"],
        "metrics": ["NDCG@10"],
    }
    default, three = Results.from_json(table()), Results.from_json(table())
    mark_improvements(default, **kw)
    mark_improvements(three, comparisons=3, **kw)
    assert default.sections[0].rows[2].cell("d", "NDCG@10").significant is True
    assert three.sections[0].rows[2].cell("d", "NDCG@10").significant is False
    assert "Bonferroni-corrected for 3 comparisons, p < 0.01" in render_markdown(three)
    with pytest.raises(ConfigError, match="comparisons must be at least 1"):
        mark_improvements(Results.from_json(table()), comparisons=0, **kw)


def test_a_worse_candidate_is_never_marked():
    best, cand = _pair_with_p(1e-6)
    table = {
        "metrics": ["P@10"],
        "datasets": ["d"],
        "sections": [
            {
                "triplet": "t",
                "rows": [
                    {
                        "key": "ir",
                        "cells": {"d": {"P@10": _cell(cand)}},
                    },  # the better one is the baseline
                    {"key": "m", "cells": {"d": {"P@10": _cell(best)}}},
                ],
            }
        ],
    }
    table = Results.from_json(table)
    mark_improvements(table, baselines=["ir"], candidates=["m"], metrics=["P@10"])
    cell = table.sections[0].rows[1].cell("d", "P@10")
    assert cell.p_value < 1e-5 and cell.significant is False


# --- fusion -------------------------------------------------------------------------------------


def test_fuse_with_weights_one_zero_is_min_max_of_first_run():
    run1 = {"q1": {"a": 3.0, "b": 1.0, "c": 2.0}, "q2": {"x": 5.0, "y": -1.0}}
    run2 = {"q1": {"a": 0.1, "d": 5.0}, "q2": {"x": 1.0, "z": 2.0}}
    fused = fuse([run1, run2], params={"weights": [1, 0]})
    for q, docs in run1.items():
        lo, hi = min(docs.values()), max(docs.values())
        for d, s in docs.items():
            assert fused[q][d] == pytest.approx((s - lo) / (hi - lo))
        assert all(fused[q][d] == 0.0 for d in fused[q] if d not in docs)
    assert fuse([run1, run2], method="combsum") == fuse([run1, run2], method="sum")
    with pytest.raises(ConfigError, match="fusion method"):
        fuse([run1, run2], method="nope")
    with pytest.raises(ConfigError, match="one weight per run"):
        fuse([run1, run2], params={"weights": [1.0]})


def test_native_wsum_min_max_equals_ranx_bit_for_bit():
    """The paper's fusion computed in Python gives ranx's own numbers exactly, edge cases included."""
    from ranx import fuse as ranx_fuse

    from mergekit_ir.evaluation.fusion import _ranx_runs, _to_dict, wsum_min_max

    rng = np.random.default_rng(7)
    bm25 = {
        f"q{i}": {f"d{j}": float(rng.normal(10, 3)) for j in rng.choice(60, 30, replace=False)}
        for i in range(40)
    }
    model = {q: {d: float(rng.normal()) for d in list(docs)[:20]} for q, docs in bm25.items()}
    bm25["ties"] = {"a": 1.0, "b": 1.0, "c": 0.5}
    model["ties"] = {"a": 2.0, "c": 2.0, "z": 2.0}  # constant scores: min-max denominator 1e-9
    bm25["only-first"] = {"a": 3.0, "b": -1.0}  # query missing from the model run
    model["only-second"] = {"x": 0.0}  # one document, and missing from BM25
    bm25["empty"], model["empty"] = {}, {}
    bm25["nan"], model["nan"] = {"a": math.nan, "b": 1.0, "c": 3.0}, {"a": 5.0, "b": 1.0, "c": 2.0}
    third = {
        q: {d: float(rng.uniform(-5, 5)) for d in list(docs)[5:25]} for q, docs in bm25.items()
    }

    def same_bits(a: dict, b: dict) -> bool:  # == would hide -0.0 vs 0.0 and fail on NaN
        return a.keys() == b.keys() and all(
            a[q].keys() == b[q].keys()
            and all(
                struct.pack("<d", a[q][d]) == struct.pack("<d", b[q][d])
                or (a[q][d] != a[q][d] and b[q][d] != b[q][d])
                for d in a[q]
            )
            for q in a
        )

    for runs, weights in [
        ([bm25, model], w) for w in ([0.5, 0.5], [0.3, 0.7], [1.0, 0.0], [0.0, 1.0], [0.2, 0.9])
    ] + [([bm25, model, third], [0.1, 0.7, 0.2]), ([bm25, model, third], [-0.3, 1.7, 3.1])]:
        ours = wsum_min_max(runs, weights)
        theirs = _to_dict(
            ranx_fuse(_ranx_runs(runs), norm="min-max", method="wsum", params={"weights": weights})
        )
        assert same_bits(ours, theirs), weights
    assert same_bits(
        fuse([bm25, model], params={"weights": [0.3, 0.7]}), wsum_min_max([bm25, model], [0.3, 0.7])
    )


def _two_query_case():
    """Query A needs w_1 > 0.25, query B needs w_1 < 0.35: only (0.3, 0.7) gets both right."""
    qrels = {"A": {"r": 1}, "B": {"r": 1}}
    run1 = {"A": {"r": 1.0, "c": 0.0, "f": 0.0}, "B": {"r": 0.0, "c": 1.0, "f": 0.0}}
    run2 = {"A": {"r": 2 / 3, "c": 1.0, "f": 0.0}, "B": {"r": 1.0, "c": 6 / 13, "f": 0.0}}
    return qrels, run1, run2


def test_tune_fusion_finds_the_only_good_weights():
    from ranx import Qrels, Run, optimize_fusion

    qrels, run1, run2 = _two_query_case()
    best = tune_fusion(qrels, [run1, run2], metric="NDCG@10")
    assert best == {"weights": (0.3, 0.7)}
    assert tune_fusion(qrels, [run1, run2], metric="NDCG@10") == best
    theirs = optimize_fusion(
        Qrels.from_dict(qrels),
        [Run.from_dict(run1), Run.from_dict(run2)],
        norm="min-max",
        method="wsum",
        metric="ndcg@10",
        show_progress=False,
    )
    assert tuple(theirs["weights"]) == best["weights"]
    fused = fuse([run1, run2], params=best)
    assert mean_scores(evaluate(qrels, fused, ["NDCG@10"]))["NDCG@10"] == pytest.approx(1.0)


# --- reports ------------------------------------------------------------------------------------


def _results() -> dict:
    def row(label, key, kind, vals, sig=(), alpha=None):
        cells = {}
        for ds, metric_vals in vals.items():
            cells[ds] = {
                m: {
                    "mean": v,
                    "per_query": {"q1": v},
                    "significant": (ds, m) in sig,
                    **({"p_value": 0.001, "compared_to": "ir"} if kind == "merged" else {}),
                }
                for m, v in metric_vals.items()
            }
        return {"label": label, "key": key, "kind": kind, "alpha": alpha, "cells": cells}

    def vals(a, b):
        return {
            "scifact": {"P@10": a, "NDCG@10": a + 0.5},
            "nfcorpus": {"P@10": b, "NDCG@10": b + 0.1},
        }

    return {
        "experiment": "table1",
        "metrics": ["P@10", "NDCG@10"],
        "datasets": ["scifact", "nfcorpus"],
        "sections": [
            {
                "triplet": "distilbert_bio",
                "rows": [
                    row("BM25", "bm25", "baseline", vals(0.0912, 0.2401)),
                    row("Θ0", "pretrained", "baseline", vals(0.05, 0.1)),
                    row("ΘT", "ir", "baseline", vals(0.1, 0.25)),
                    row("Θ' (α=1)", "merged@1", "merged", vals(0.1004, 0.2)),
                    row(
                        "Θ' (α=0.3)",
                        "merged@best",
                        "merged",
                        vals(0.12, 0.26),
                        sig={("scifact", "P@10"), ("nfcorpus", "NDCG@10")},
                        alpha={"scifact": 0.3, "nfcorpus": 0.5},
                    ),
                ],
            }
        ],
        "alpha_ablation": {
            "distilbert_bio": {
                "metric": "NDCG@10",
                "split": "dev",
                "values": {
                    "scifact": {"0.1": 0.61, "0.2": 0.625, "0.3": 0.62},
                    "nfcorpus": {"0.1": 0.31, "0.2": 0.30},
                },
            }
        },
    }


def test_markdown_bold_and_star():
    md = render_markdown(_results())
    lines = md.splitlines()
    assert "| Model | scifact P@10 | scifact NDCG@10 | nfcorpus P@10 | nfcorpus NDCG@10 |" in lines
    assert "| *distilbert_bio* |  |  |  |  |" in lines
    assert "| BM25 | 0.091 | 0.591 | 0.240 | 0.340 |" in lines
    # 0.1 and 0.1004 both show as 0.100: not the best (0.120) anyway
    assert "| ΘT | 0.100 | 0.600 | 0.250 | 0.350 |" in lines
    assert "| Θ' (α=0.3) | **0.120**\\* | **0.620** | **0.260** | **0.360**\\* |" in lines
    assert "- distilbert_bio, Θ' (α=0.3): scifact α=0.3, nfcorpus α=0.5" in lines


def test_markdown_bolds_every_tie_at_three_decimals():
    res = _results()
    res["sections"][0]["rows"] = res["sections"][0]["rows"][2:4]  # ΘT 0.1 vs Θ' 0.1004
    lines = render_markdown(res).splitlines()
    assert "| ΘT | **0.100** | **0.600** | **0.250** | **0.350** |" in lines
    assert "| Θ' (α=1) | **0.100** | **0.600** | 0.200 | 0.300 |" in lines


def test_latex_and_csv():
    tex = render_latex(_results())
    assert "\\multicolumn{2}{c}{scifact} & \\multicolumn{2}{c}{nfcorpus}" in tex
    assert "\\cmidrule(lr){2-3} \\cmidrule(lr){4-5}" in tex
    assert "\\textit{distilbert\\_bio}" in tex
    assert "$\\Theta'$ ($\\alpha$=0.3) & \\textbf{0.120}$^{*}$ & \\textbf{0.620} &" in tex
    assert "$\\Theta_{0}$ & 0.050" in tex
    assert tex.count("\\toprule") == 1 and tex.count("\\bottomrule") == 1
    csv_lines = render_csv(_results()).splitlines()
    assert csv_lines[0] == "triplet,row,dataset,metric,value,significant,p_value,alpha,lambda"
    assert "distilbert_bio,merged@best,scifact,P@10,0.12,true,0.001,0.3," in csv_lines
    assert "distilbert_bio,bm25,nfcorpus,P@10,0.2401,false,,," in csv_lines
    assert len(csv_lines) == 1 + 5 * 2 * 2


def test_alpha_table():
    lines = render_alpha_table(_results()).splitlines()
    assert "| α | distilbert_bio / scifact | distilbert_bio / nfcorpus |" in lines
    assert "| 0.2 | **0.625** | 0.300 |" in lines
    assert "| 0.3 | 0.620 | – |" in lines
    assert "No α ablation" in render_alpha_table({"sections": []})


def test_write_reports_is_byte_identical(tmp_path):
    a = write_reports(_results(), tmp_path / "a")
    b = write_reports(_results(), tmp_path / "b")
    assert [p.name for p in a] == [
        "results.md",
        "results.tex",
        "results.csv",
        "alpha.md",
        "alpha.png",
        "alpha.tex",
    ]
    for pa, pb in zip(a, b, strict=True):
        assert pa.read_bytes() == pb.read_bytes(), pa.name
    assert a[4].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "a").glob(".*"))  # no temporary files left
    no_alpha = {k: v for k, v in _results().items() if k != "alpha_ablation"}
    written = write_reports(no_alpha, tmp_path / "a")
    assert "alpha.png" not in [p.name for p in written]
    assert not (tmp_path / "a" / "alpha.png").exists()  # the stale plot is gone
    assert not (tmp_path / "a" / "alpha.tex").exists()


def test_alpha_table_and_plot_with_layer_wise_alpha(tmp_path):
    """A layer-wise α (JSON label) gets its own row after the scalar ones; the plot keeps the scalars."""
    res = _results()
    res["alpha_ablation"]["distilbert_bio"]["values"]["scifact"]['{"gradient": [0.0, 1.0]}'] = 0.7
    lines = render_alpha_table(res).splitlines()
    rows = [ln.split(" | ")[0] for ln in lines if ln.startswith("| ") and not ln.startswith("| α")]
    assert rows == ["| 0.1", "| 0.2", "| 0.3", "| gradient 0 → 1"]
    assert "| gradient 0 → 1 | **0.700** | – |" in lines
    names = [p.name for p in write_reports(res, tmp_path)]
    assert "alpha.png" in names
    only_layer_wise = {
        "alpha_ablation": {
            "t": {"metric": "NDCG@10", "values": {"d": {'{"gradient": [0, 1]}': 0.5}}}
        }
    }  # plotted as points beside the α axis
    assert "alpha.png" in [p.name for p in write_reports(only_layer_wise, tmp_path / "b")]


def test_alpha_labels_read_as_written():
    """Layer-wise α print as the user wrote them: no JSON, no ``filter: ""`` they never wrote."""
    from mergekit_ir.results import alpha_display, alpha_label

    rules = [{"filter": "attention", "value": 0.3}, {"filter": "", "value": 1.0}]
    assert alpha_display(alpha_label(rules)) == "attention: 0.3; else: 1"
    assert alpha_display(alpha_label({"gradient": [0.2, 0.5, 0.8]})) == "gradient 0.2 → 0.5 → 0.8"
    assert alpha_display(alpha_label(0.25)) == "0.25"


def test_alpha_table_follows_the_grid_order_and_shows_references():
    res = _results()
    abl = res["alpha_ablation"]["distilbert_bio"]
    abl["order"] = ["0.3", "0.1", "0.2"]
    abl["references"] = {"scifact": {"ΘT": 0.61, "BM25": 0.55}}
    lines = render_alpha_table(res).splitlines()
    rows = [ln.split(" | ")[0] for ln in lines if ln.startswith("| ") and not ln.startswith("| α")]
    assert rows == ["| 0.3", "| 0.1", "| 0.2", "| *ΘT*", "| *BM25*"]
    assert "| *ΘT* | 0.610 | – |" in lines and "| *BM25* | 0.550 | – |" in lines


def test_markdown_and_latex_name_a_layer_wise_best_alpha():
    res = _results()
    best = res["sections"][0]["rows"][-1]
    best["alpha"] = {"scifact": '{"gradient": [0.0, 1.0]}', "nfcorpus": "0.5"}
    assert "- distilbert_bio, Θ' (α=0.3): scifact α=gradient 0 → 1, nfcorpus α=0.5" in (
        render_markdown(res).splitlines()
    )
    assert "\\{" in render_latex(
        {
            **res,
            "sections": [
                {"triplet": "t", "rows": [{**best, "label": 'Θ\' (α={"gradient": [0.0, 1.0]})'}]}
            ],
        }
    )


def test_reports_survive_the_json_round_trip(tmp_path):
    """`mergeir report` renders from results.json (sorted keys): same bytes as the run's own render."""
    import json

    res = _results()
    second = {**res["sections"][0], "triplet": "a-first-by-name"}
    res["sections"].append(second)
    res["alpha_ablation"]["a-first-by-name"] = res["alpha_ablation"]["distilbert_bio"]
    res["sections"][0]["rows"][-1]["alpha"] = {"scifact": "0.3", "nfcorpus": "0.5"}
    direct = write_reports(res, tmp_path / "direct")
    again = write_reports(json.loads(json.dumps(res, sort_keys=True)), tmp_path / "again")
    for a, b in zip(direct, again, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name
    header = (tmp_path / "direct" / "alpha.md").read_text().splitlines()[4]
    assert header.startswith(
        "| α | distilbert_bio / scifact | distilbert_bio / nfcorpus | a-first-by-name / scifact"
    )


def test_tuned_alpha_of_one_is_printed_once_and_tuned_lambda_is_shown():
    res = _results()
    rows = res["sections"][0]["rows"]
    best = next(r for r in rows if r["key"] == "merged@best")
    best["alpha"] = {"scifact": "1", "nfcorpus": "1"}
    best["label"] = "Θ' (α=1)"
    md = render_markdown(res)
    assert md.count("| Θ' (α=1) |") == 1
    assert "Note: distilbert_bio: the tuned α is 1 on every dataset" in md
    assert "λ (fusion weights" not in md  # no λ recorded: nothing to show
    res["fusion"] = {"distilbert_bio": {"ir": {"scifact": {"weights": [0.3, 0.7]},
                                               "nfcorpus": {"weights": [0.5, 0.5]}}}}  # fmt: skip
    md = render_markdown(res)
    assert "- distilbert_bio, ΘT: scifact 0.3/0.7, nfcorpus 0.5/0.5" in md
    assert "distilbert_bio,ir,scifact,P@10,0.1,false,,,0.3/0.7" in render_csv(res).splitlines()


def test_alpha_latex_table():
    from mergekit_ir.reports.render import render_alpha_latex

    tex = render_alpha_latex(_results())
    assert "$\\alpha$ & distilbert\\_bio / scifact & distilbert\\_bio / nfcorpus \\\\" in tex
    assert "0.2 & \\textbf{0.625} & 0.300 \\\\" in tex and "0.3 & 0.620 & -- \\\\" in tex
    assert render_alpha_latex({"sections": []}) is None
