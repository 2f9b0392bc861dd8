"""The registry's `reported:` blocks hold the paper's Tables 1–3 exactly, cell by cell.

The transcription lives outside the repository (``../shared/paper/tables.tsv``); the
registry carries a copy (``scripts/paper_tables.py``). These tests make the copy unable
to drift: every printed cell with its value and ``*``, nothing invented for a blank one.
"""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from mergekit_ir.cli import main
from mergekit_ir.experiments.registry import load_registry
from mergekit_ir.reports.published import render_published, sweep_alpha
from mergekit_ir.reports.reported import ReportedRow

ROOT = Path(__file__).resolve().parents[1]
TSV = ROOT.parent / "shared" / "paper" / "tables.tsv"
needs_tsv = pytest.mark.skipif(not TSV.is_file(), reason=f"{TSV} not present")
TUNED_ALPHA = {  # Table 1, as the paper's Section 3 states them
    "llama2-bio": 0.8,
    "monot5-large-bio": 0.9,
    "monot5-base-bio": 0.7,
    "roberta-bio": 0.3,
    "distilbert-bio": 0.5,
}


def tsv_cells() -> list[dict[str, str]]:
    with TSV.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def experiments_of(cell: dict[str, str]) -> list[str]:
    """Where a cell must appear: Table 2's in the all-pairs and the per-dataset experiment."""
    table = cell["table"]
    if table == "2":
        return ["paper-table2", f"paper-table2-{cell['dataset']}"]
    return [f"paper-table{table}"]


def find(rows: tuple[ReportedRow, ...], cell: dict[str, str]) -> ReportedRow | None:
    dataset = cell["dataset"].removesuffix(" (dev)")
    triplet = cell["triplet"] or None
    for r in rows:
        if r.dataset != dataset or r.triplet != triplet:
            continue
        if cell["row"].startswith("alpha="):
            a = sweep_alpha(r)
            if a is not None and math.isclose(a, float(cell["alpha"]), abs_tol=1e-9):
                return r
        elif r.row == cell["row"]:
            return r
    return None


@needs_tsv
def test_every_published_cell_is_in_the_registry_with_its_value_and_mark():
    reg = load_registry(ROOT / "registry.yaml")
    cells = tsv_cells()
    assert len(cells) == 596
    expected: dict[str, set] = {}
    for cell in cells:
        for name in experiments_of(cell):
            row = find(reg.experiment(name).reported, cell)
            where = f"{name}: table {cell['table']} {cell['triplet']} {cell['row']} {cell['dataset']} {cell['metric']}"
            if not cell["value"]:  # blank in the source: omitted, not invented
                assert row is None or cell["metric"] not in row.values, where
                continue
            assert row is not None, where
            expected.setdefault(name, set()).add((id(row), cell["metric"]))
            assert row.values.get(cell["metric"]) == float(cell["value"]), where
            assert (cell["metric"] in row.significant) == (cell["significant"] == "*"), where
            assert row.source == f"paper Table {cell['table']}", where
            if cell["row"] == "merged@best":
                assert row.alpha == float(cell["alpha"]) == TUNED_ALPHA[cell["triplet"]], where
    # and nothing else: every declared cell of the paper experiments comes from the TSV
    for name, seen in expected.items():
        declared = {(id(r), m) for r in reg.experiment(name).reported for m in r.values}
        assert declared == seen, name
    assert set(expected) == {
        "paper-table1",
        "paper-table2",
        "paper-table3",
        *(f"paper-table2-{d}" for d in ("germanquad", "miracl-es", "miracl-fr", "miracl-en")),
    }


@needs_tsv
def test_registry_blocks_are_what_the_script_generates():
    res = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "paper_tables.py"), "--check", "--tsv", str(TSV)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_bundled_registry_validates_with_the_published_cells():
    res = CliRunner().invoke(main, ["validate", str(ROOT / "registry.yaml")])
    assert res.exit_code == 0 and ": ok — " in res.output, res.output


def test_render_published_test_rows_and_alpha_sweep():
    rows = (
        ReportedRow(dataset="toy", row="bm25", values={"P@10": 0.5, "NDCG@10": 0.691}, source="T1"),
        ReportedRow(
            dataset="toy",
            row="merged@best",
            triplet="t1",
            alpha=0.3,
            values={"NDCG@10": 0.72, "P@10": 0.51},
            significant=("NDCG@10",),
            source="T1",
        ),
        ReportedRow(dataset="toy", row="alpha=1.0", triplet="t1", values={"NDCG@10": 0.64}),
        ReportedRow(dataset="toy", row="alpha=0.7", triplet="t1", values={"NDCG@10": 0.722}),
        ReportedRow(dataset="dev2", row="alpha=0.7", triplet="t1", values={"NDCG@10": 0.3}),
    )
    md = render_published("exp", rows, ["P@10", "NDCG@10"]).splitlines()
    assert md[0].startswith("`exp`: 5 published rows, 7 cells.")
    assert "**toy** (source: T1)" in md
    assert "| – | BM25 | 0.500 | 0.691 |" in md
    assert "| t1 | Θ' (α=0.3) | 0.510 | 0.720\\* |" in md
    assert "| α | t1 / toy | t1 / dev2 |" in md
    assert md[md.index("| α | t1 / toy | t1 / dev2 |") + 2 :] == [
        "| 0.7 | 0.722 | 0.300 |",
        "| 1 | 0.640 | – |",
    ]


def test_cli_reported_prints_the_tables_and_refuses_an_experiment_without_cells():
    res = CliRunner().invoke(
        main, ["reported", "paper-table2-germanquad", "--registry", str(ROOT / "registry.yaml")]
    )
    assert res.exit_code == 0, res.output
    assert "| mt5-de | Θ' (α=1) | 0.071\\* | 0.477\\* | 0.537\\* | 0.487\\* |" in res.output
    assert "| – | BM25 | – | 0.381 | 0.437 | 0.397 |" in res.output  # P@10 blank in the paper
    res = CliRunner().invoke(
        main, ["reported", "quickstart", "--registry", str(ROOT / "registry.yaml")]
    )
    assert res.exit_code == 2
    assert res.output.strip() == (
        "error: experiments.quickstart: declares no reported: cells "
        "(docs/registry.md, 'Published numbers')"
    )


@pytest.mark.parametrize("experiment", ["paper-table1", "paper-table2", "paper-table3"])
def test_reproduce_md_shows_the_tables_as_the_registry_prints_them(experiment):
    exp = load_registry(ROOT / "registry.yaml").experiment(experiment)
    printed = render_published(experiment, exp.reported, exp.metrics)
    assert printed in (ROOT / "docs" / "reproduce.md").read_text(encoding="utf-8"), (
        f"docs/reproduce.md is stale: paste `mergeir reported {experiment}` there"
    )
