"""Published cells declared in the registry: validation, comparison with a run, rendering."""

from __future__ import annotations

from pathlib import Path

import pytest

from mergekit_ir.errors import ConfigError
from mergekit_ir.experiments.registry import load_registry
from mergekit_ir.reports.render import render_reported, write_reports
from mergekit_ir.reports.reported import ReportedRow, compare, marks_summary, summary

ROOT = Path(__file__).resolve().parents[1]

REGISTRY = """
datasets:
  toy: {beir: data/toy, test: test, dev: dev}
  other: {beir: data/other, test: test}
triplets:
  t1:
    scorer: {kind: bi-encoder, pooling: mean}
    pretrained: bert-base-uncased
    domain: some/bio-bert
    ir: some/ir-model
experiments:
  table1:
    triplets: [t1]
    datasets: [toy, other]
    metrics: [P@10, NDCG@10]
    reported:
      - {dataset: toy, row: bm25, P@10: 0.5, NDCG@10: 0.691, source: "Table 1"}
      - {triplet: t1, dataset: toy, row: merged@best, alpha: 0.3, NDCG@10: 0.7}
      - {triplet: t1, dataset: toy, row: alpha=0.2, NDCG@10: 0.6}
"""


def load(tmp_path: Path, text: str):
    p = tmp_path / "registry.yaml"
    p.write_text(text)
    return load_registry(p)


def test_reported_rows_parse(tmp_path):
    rows = load(tmp_path, REGISTRY).experiment("table1").reported
    assert rows[0] == ReportedRow(
        dataset="toy", row="bm25", values={"P@10": 0.5, "NDCG@10": 0.691}, source="Table 1"
    )
    assert rows[1].triplet == "t1" and rows[1].alpha == 0.3 and rows[1].values == {"NDCG@10": 0.7}
    assert rows[2].row == "alpha=0.2"


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "dataset: toy, row: bm25",
            "dataset: scifact, row: bm25",
            r"^experiments\.table1\.reported\[0\]\.dataset: 'scifact' is not a dataset of this experiment \(toy, other\)$",
        ),
        (
            "row: merged@best",
            "row: merged@2",
            r"^experiments\.table1\.reported\[1\]\.row: unknown row 'merged@2'",
        ),
        (
            "triplet: t1, dataset: toy, row: merged@best",
            "dataset: toy, row: merged@best",
            r"^experiments\.table1\.reported\[1\]: row 'merged@best' needs a 'triplet'",
        ),
        (
            "triplet: t1, dataset: toy, row: alpha",
            "triplet: t9, dataset: toy, row: alpha",
            r"^experiments\.table1\.reported\[2\]\.triplet: 't9' is not a triplet of this experiment \(t1\)$",
        ),
        (
            "P@10: 0.5",
            "MAP@100: 0.5",
            r"^experiments\.table1\.reported\[0\]\.MAP@100: not a metric this experiment reports \(P@10, NDCG@10\)$",
        ),
        (
            "row: alpha=0.2, NDCG@10",
            "row: alpha=0.2, P@10",
            r"^experiments\.table1\.reported\[2\]\.P@10: not a metric of the α ablation \(NDCG@10\)$",
        ),
        (
            "NDCG@10: 0.691",
            "NDCG@10: 69.1",
            r"^experiments\.table1\.reported\[0\]\.NDCG@10: 69\.1 is not a number in \[0, 1\]",
        ),
        (
            "NDCG@10: 0.691",
            "NDCG@10: high",
            r"^experiments\.table1\.reported\[0\]\.NDCG@10: 'high' is not a number in \[0, 1\]",
        ),
        (
            "alpha: 0.3, NDCG@10: 0.7",
            "alpha: best",
            r"^experiments\.table1\.reported\[1\]: no metric values",
        ),
        (
            "alpha: 0.3,",
            "alpha: best,",
            r"^experiments\.table1\.reported\[1\]\.alpha: 'best' is not a number",
        ),
        (
            "row: merged@best",
            "row: domain2",
            r"^experiments\.table1\.reported\[1\]\.row: triplet 't1' has no row 'domain2' \(its rows: bm25, pretrained, domain, ir, merged@1, merged@best\)$",
        ),
        (
            "row: alpha=0.2",
            "row: alpha=0.25",
            r"^experiments\.table1\.reported\[2\]\.row: α=0\.25 is not in merge\.alpha \(0\.1, 0\.2,",
        ),
        (
            "dataset: toy, row: alpha=0.2",
            "dataset: other, row: alpha=0.2",
            r"^experiments\.table1\.reported\[2\]\.row: no α sweep runs on 'other' in this experiment",
        ),
        (
            '    reported:\n      - {dataset: toy, row: bm25, P@10: 0.5, NDCG@10: 0.691, source: "Table 1"}\n',
            "    reported: {dataset: toy}\n",
            r"^experiments\.table1\.reported: give a list of rows",
        ),
    ],
)
def test_bad_reported_rows(tmp_path, old, new, message):
    assert old in REGISTRY
    text = REGISTRY.replace(old, new, 1)
    if "give a list" in message:  # the whole block becomes one mapping
        text = text.split("    reported:")[0] + "    reported: {dataset: toy}\n"
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, text)


def _results() -> dict:
    def row(key, label, ndcg, alpha=None):
        return {
            "key": key,
            "label": label,
            "alpha": alpha,
            "cells": {"toy": {"NDCG@10": {"mean": ndcg}, "P@10": {"mean": 0.5}}},
        }

    return {
        "experiment": "table1",
        "sections": [
            {
                "triplet": "t1",
                "rows": [
                    row("bm25", "BM25", 0.6914),
                    row("merged@best", "Θ' (α=0.4)", 0.688, alpha={"toy": "0.4"}),
                ],
            },
            {"triplet": "t2", "rows": [row("bm25", "BM25", 0.6914), row("ir", "ΘT", 0.9)]},
        ],
        "alpha_ablation": {
            "t1": {"metric": "NDCG@10", "values": {"toy": {"0.1": 0.55, "0.2": 0.61}}}
        },
    }


def test_compare_matches_rows_sections_and_ablation(tmp_path):
    rows = load(tmp_path, REGISTRY).experiment("table1").reported
    rows += (ReportedRow(dataset="other", row="bm25", values={"NDCG@10": 0.3}),)
    cells = compare(_results(), rows)
    by = {(c.row, c.metric): c for c in cells if c.dataset == "toy"}
    assert by["bm25", "NDCG@10"].ours == 0.6914 and by["bm25", "NDCG@10"].delta == pytest.approx(
        0.0004
    )
    assert by["bm25", "P@10"].delta == 0.0
    best = by["merged@best", "NDCG@10"]
    assert (
        best.delta == pytest.approx(-0.012)
        and best.alpha_ours == "0.4"
        and best.alpha_reported == 0.3
    )
    assert (
        by["alpha=0.2", "NDCG@10"].ours == 0.61 and by["alpha=0.2", "NDCG@10"].label == "dev, α=0.2"
    )
    assert by["bm25", "NDCG@10"].triplet is None
    other = [c for c in cells if c.dataset == "other"]
    assert other[0].ours is None and other[0].delta is None  # dataset not in this run
    assert summary(cells) == (
        "4 reported cells compared, 1 not in this run: 2 within ±0.005, "
        "largest |Δ| 0.012 (t1 toy merged@best NDCG@10)"
    )
    assert summary(other) == "1 reported cells, none of them in this run"


def test_render_reported_and_stale_file(tmp_path):
    res = _results()
    res["reported"] = compare(res, load(tmp_path, REGISTRY).experiment("table1").reported)
    md = render_reported(res)
    lines = md.splitlines()
    assert "| – | toy | BM25 | NDCG@10 | 0.691 | 0.691 | 0.000 | Table 1 |" in lines
    assert (
        "| t1 | toy | Θ' (α=0.4); reported α=0.3 | NDCG@10 | 0.700 | 0.688 | -0.012 |  |" in lines
    )
    assert "| t1 | toy | dev, α=0.2 | NDCG@10 | 0.600 | 0.610 | +0.010 |  |" in lines
    assert lines[-1].startswith("4 reported cells compared: 2 within ±0.005")
    out = tmp_path / "out"
    assert "reported.md" in [p.name for p in write_reports(res, out)]
    assert (out / "reported.md").read_text() == md
    del res["reported"]
    write_reports(res, out)
    assert not (out / "reported.md").exists()  # a comparison that no longer applies is removed
    assert render_reported(res) is None


def test_bundled_paper_experiments_declare_their_recovered_cells():
    reg = load_registry(ROOT / "registry.yaml")
    t1 = {(r.triplet, r.dataset, r.row): r.values for r in reg.experiment("paper-table1").reported}
    assert (
        t1[None, "scifact", "bm25"]["NDCG@10"] == 0.691
        and t1[None, "nfcorpus", "bm25"]["NDCG@10"] == 0.343
    )
    assert (
        t1[None, "scifact", "bm25"]["MAP@100"] == 0.649
        and ("roberta-bio", "scifact", "merged@best") in t1
    )
    t3 = {(r.triplet, r.dataset, r.row): r.values for r in reg.experiment("paper-table3").reported}
    assert t3["monot5-base-bio", "scifact", "alpha=0.7"] == {"NDCG@10": 0.722}
    assert t3["monot5-base-bio", "scifact", "alpha=1.0"] == {"NDCG@10": 0.640}


def test_tuned_label_says_which_alpha_each_dataset_got():
    res = _results()
    row = res["sections"][0]["rows"][1]
    row["label"], row["alpha"] = "Θ' (tuned α)", {"toy": "0.6", "other": "0.2"}
    res["reported"] = compare(
        res,
        [
            ReportedRow(
                dataset="toy", row="merged@best", triplet="t1", values={"NDCG@10": 0.7}, alpha=0.3
            )
        ],
    )
    assert "| t1 | toy | Θ' (tuned α); ours α=0.6; reported α=0.3 | NDCG@10 |" in render_reported(
        res
    )


def test_reported_values_keep_their_published_decimals():
    res = _results()
    res["reported"] = compare(
        res, [ReportedRow(dataset="toy", row="bm25", values={"NDCG@10": 0.2613})]
    )
    assert (
        "| – | toy | BM25 | NDCG@10 | 0.2613 | 0.691 | +0.430 |  |"
        in render_reported(res).splitlines()
    )


@pytest.mark.parametrize(
    ("marks", "message"),
    [
        (
            "significant: NDCG@10",
            r"^experiments\.table1\.reported\[0\]\.significant: give a list of this row's metrics "
            r"that the paper marks with \*",
        ),
        (
            "significant: [MAP@100]",
            r"^experiments\.table1\.reported\[0\]\.significant\[0\]: 'MAP@100' is not a metric of "
            r"this row \(P@10, NDCG@10\); a mark needs its value$",
        ),
        (
            "significant: [NDCG@10, NDCG@10]",
            r"^experiments\.table1\.reported\[0\]\.significant\[1\]: 'NDCG@10' is listed twice$",
        ),
    ],
)
def test_bad_significance_marks(tmp_path, marks, message):
    text = REGISTRY.replace("NDCG@10: 0.691, source:", f"NDCG@10: 0.691, {marks}, source:")
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, text)


def _marked(tmp_path):
    text = REGISTRY.replace(
        'NDCG@10: 0.691, source: "Table 1"}',
        'NDCG@10: 0.691, significant: [NDCG@10], source: "Table 1"}',
    ).replace(
        "alpha: 0.3, NDCG@10: 0.7}", "alpha: 0.3, NDCG@10: 0.7, P@10: 0.5, significant: [NDCG@10]}"
    )
    rows = load(tmp_path, text).experiment("table1").reported
    assert rows[0].significant == ("NDCG@10",) and rows[1].significant == ("NDCG@10",)
    assert rows[2].significant == ()
    res = _results()
    best = res["sections"][0]["rows"][1]["cells"]["toy"]
    best["P@10"]["significant"] = True  # ours marks P@10, the paper NDCG@10
    return res, rows


def test_compare_carries_both_marks(tmp_path):
    res, rows = _marked(tmp_path)
    rows += (
        ReportedRow(dataset="other", row="bm25", values={"NDCG@10": 0.3}, significant=("NDCG@10",)),
    )
    by = {(c.dataset, c.row, c.metric): c for c in compare(res, rows)}
    assert by["toy", "merged@best", "NDCG@10"].significant_reported is True
    assert by["toy", "merged@best", "NDCG@10"].significant_ours is False
    assert by["toy", "merged@best", "P@10"].significant_reported is False
    assert by["toy", "merged@best", "P@10"].significant_ours is True
    assert by["toy", "bm25", "P@10"].significant_ours is False  # run, unmarked
    assert by["toy", "alpha=0.2", "NDCG@10"].significant_ours is None  # no test on dev α
    assert by["other", "bm25", "NDCG@10"].significant_ours is None  # not in this run
    assert marks_summary(by.values()) == (
        "`*` marks in this run's 4 cells: paper 2, ours 1, both 0; paper only: 2 (toy bm25 NDCG@10, t1 toy merged@best NDCG@10); "
        "ours only: 1 (t1 toy merged@best P@10); 1 marked by the paper not in this run"
    )


def test_render_reported_shows_both_marks(tmp_path):
    res, rows = _marked(tmp_path)
    res["reported"] = compare(res, rows)
    lines = render_reported(res).splitlines()
    assert "| – | toy | BM25 | NDCG@10 | 0.691\\* | 0.691 | 0.000 | Table 1 |" in lines
    assert (
        "| t1 | toy | Θ' (α=0.4); reported α=0.3 | NDCG@10 | 0.700\\* | 0.688 | -0.012 |  |"
        in lines
    )
    assert "| t1 | toy | Θ' (α=0.4); reported α=0.3 | P@10 | 0.500 | 0.500\\* | 0.000 |  |" in lines
    assert lines[-3].startswith(
        "`*` marks in this run's 4 cells: paper 2, ours 1, both 0; paper only: 2 ("
    )
    assert lines[-1].startswith("5 reported cells compared: ")


def test_no_marks_line_when_neither_side_marks():
    res = _results()
    res["reported"] = compare(
        res, [ReportedRow(dataset="toy", row="bm25", values={"NDCG@10": 0.69})]
    )
    assert res["reported"][0].significant_reported is False
    assert "`*` marks" not in render_reported(res)
    assert marks_summary(res["reported"]) is None


def test_marks_on_the_same_cell_count_as_both(tmp_path):
    res, rows = _marked(tmp_path)
    res["sections"][0]["rows"][1]["cells"]["toy"]["NDCG@10"]["significant"] = True
    assert marks_summary(compare(res, rows)) == (
        "`*` marks in this run's 4 cells: paper 2, ours 2, both 1; paper only: 1 (toy bm25 NDCG@10); "
        "ours only: 1 (t1 toy merged@best P@10)"
    )
