"""Registry validation: every bad input gets a one-line error naming the YAML path."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from mergekit_ir.cli import main
from mergekit_ir.errors import ConfigError, PluginError
from mergekit_ir.experiments.registry import load_registry

ROOT = Path(__file__).resolve().parents[1]

BASE = """
datasets:
  toy: {beir: data/toy, test: test, dev: dev}
triplets:
  t1:
    scorer: {kind: bi-encoder, pooling: mean}
    pretrained: bert-base-uncased
    domain: some/bio-bert
    ir: some/ir-model
experiments:
  table1:
    triplets: [t1]
    datasets: [toy]
    merge: {method: task_arithmetic, alpha: [0.1, 0.5, 1.0, 1.7]}
"""


def load(tmp_path: Path, text: str):
    p = tmp_path / "registry.yaml"
    p.write_text(text)
    return load_registry(p)


def test_bundled_registry_is_valid():
    reg = load_registry(ROOT / "registry.yaml")
    assert {
        "quickstart",
    } <= set(reg.experiments)
    assert {"distilbert-bio", "monot5-base-bio", "llama2-bio"} <= set(reg.triplets)
    assert reg.experiment("quickstart").alphas == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def test_alpha_out_of_range_names_path(tmp_path):
    text = BASE.replace("1.7]", "2.7]")
    with pytest.raises(
        ConfigError, match=r"^experiments\.table1\.merge\.alpha\[3\]: 2\.7 is outside \[-2, 2\]$"
    ):
        load(tmp_path, text)


def test_valid_minimal(tmp_path):
    reg = load(tmp_path, BASE)
    exp = reg.experiment("table1")
    assert exp.alphas == (0.1, 0.5, 1.0, 1.7) and exp.fusion_params == {"weights": [0.5, 0.5]}
    assert reg.triplet("t1").domains[0].ref == "some/bio-bert"


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "method: task_arithmetic",
            "method: magic",
            r"experiments\.table1\.merge\.method: unknown merge method 'magic' \(installed: .*task_arithmetic",
        ),
        (
            "alpha: [0.1",
            "gamma: 3, alpha: [0.1",
            r"experiments\.table1\.merge\.gamma: unknown parameter for merge method 'task_arithmetic'",
        ),
        (
            "kind: bi-encoder",
            "kind: quantum",
            r"triplets\.t1\.scorer\.kind: unknown scorer 'quantum'",
        ),
        (
            "pooling: mean",
            "pooling: median",
            r"triplets\.t1\.scorer\.pooling: 'median' is not one of",
        ),
        ("    ir: some/ir-model\n", "", r"triplets\.t1\.ir: missing required field"),
        (
            "triplets: [t1]",
            "triplets: [t2]",
            r"experiments\.table1\.triplets\[0\]: unknown triplet 't2'",
        ),
        (
            "datasets: [toy]",
            "datasets: [toy, beir]",
            r"experiments\.table1\.datasets\[1\]: unknown dataset 'beir'",
        ),
        (
            "merge:",
            "metrics: [P@10, XYZ@3]\n    merge:",
            r"experiments\.table1\.metrics\[1\]: .*XYZ@3",
        ),
        (
            "merge:",
            "first_stage: {backend: lucene}\n    merge:",
            r"experiments\.table1\.first_stage\.backend: unknown first-stage backend 'lucene'",
        ),
        (
            "merge:",
            "first_stage: {k1: 20.0}\n    merge:",
            r"experiments\.table1\.first_stage\.k1: 20 is outside \[0, 10\]",
        ),
        (
            "merge:",
            "fusion: {method: magic}\n    merge:",
            r"experiments\.table1\.fusion\.method: unknown ranx fusion 'magic'",
        ),
        (
            "merge:",
            "fusion: {weights: [1]}\n    merge:",
            r"experiments\.table1\.fusion\.weights: give two numbers",
        ),
        (
            "merge:",
            "evaluation: {queries: some}\n    merge:",
            r"experiments\.table1\.evaluation\.queries: 'some' is not one of all, retrieved",
        ),
        ("merge:", "colour: red\n    merge:", r"experiments\.table1\.colour: unknown field"),
        (
            "merge:",
            "significance: {comparisons: 0}\n    merge:",
            r"experiments\.table1\.significance\.comparisons: 0 is not a positive integer",
        ),
        (
            "merge:",
            "significance: {comparisons: 3, correction: none}\n    merge:",
            r"experiments\.table1\.significance\.comparisons: only used with correction: bonferroni",
        ),
        (
            "  toy: {beir: data/toy, test: test, dev: dev}",
            "  toy: {test: test}",
            r"datasets\.toy: give 'beir'",
        ),
    ],
)
def test_bad_registry(tmp_path, old, new, message):
    assert old in BASE
    with pytest.raises((ConfigError, PluginError), match=message):
        load(tmp_path, BASE.replace(old, new, 1))


def test_duplicate_name(tmp_path):
    text = BASE.replace(
        "triplets:\n", "triplets:\n  t1: {scorer: bi-encoder, ir: x, domain: y, pretrained: z}\n", 1
    )
    with pytest.raises(
        ConfigError, match=r"registry\.yaml:\d+: duplicate name 't1' \(first defined on line \d+\)"
    ):
        load(tmp_path, text)


def test_bad_yaml_syntax(tmp_path):
    with pytest.raises(ConfigError, match=r"registry\.yaml:\d+:\d+: invalid YAML"):
        load(tmp_path, BASE + "  bad: [unclosed\n")


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="registry file not found"):
        load_registry(tmp_path / "none.yaml")


def test_cli_validate(tmp_path):
    res = CliRunner().invoke(main, ["validate", str(ROOT / "registry.yaml")])
    assert res.exit_code == 0 and ": ok" in res.output
    bad = tmp_path / "r.yaml"
    bad.write_text(BASE.replace("1.7]", "2.7]"))
    res = CliRunner().invoke(main, ["validate", str(bad)])
    assert res.exit_code == 2
    assert res.output.strip() == "error: experiments.table1.merge.alpha[3]: 2.7 is outside [-2, 2]"


def test_readme_registry_example_is_valid(tmp_path):
    """The README's 'Declaring a triplet' block is a complete registry, not just an excerpt."""
    import re

    block = re.search(r"```yaml\n(datasets:.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block, "README.md lost its registry example"
    reg = load(tmp_path, block.group(1))
    assert (
        reg.experiment("my-experiment").tune_fusion and reg.dataset("scifact").dev == "train[:20%]"
    )


def test_validate_accepts_exactly_what_the_code_runs(tmp_path):
    """Every choice list has one source: each listed value validates *and* runs."""
    import torch

    from mergekit_ir.evaluation.fusion import FUSION_METHODS, NORMS, fusion_method_name, norm_name
    from mergekit_ir.evaluation.significance import CORRECTIONS, TESTS, mark_improvements
    from mergekit_ir.results import Cell, Row, Section
    from mergekit_ir.scoring.scorer import DTYPES, resolve_dtype

    for method in FUSION_METHODS:  # fuse() resolves names with fusion_method_name
        exp = load(tmp_path, BASE + f"    fusion: {{method: {method}}}\n").experiment("table1")
        assert fusion_method_name(exp.fusion_method)
    for norm in NORMS:
        exp = load(tmp_path, BASE + f"    fusion: {{norm: {norm}}}\n").experiment("table1")
        norm_name(exp.fusion_norm)
    for test in TESTS:
        for correction in CORRECTIONS:
            block = f"    significance: {{test: {test}, correction: {correction}}}\n"
            exp = load(tmp_path, BASE + block).experiment("table1")
            pq = {f"q{i}": float(i % 3) for i in range(6)}
            section = Section(
                "t",
                [
                    Row("ir", "ΘT", cells={"d": {"m": Cell(1.0, pq)}}),
                    Row(
                        "merged@1",
                        "Θ'",
                        cells={"d": {"m": Cell(2.0, {k: v + 1 for k, v in pq.items()})}},
                    ),
                ],
            )
            mark_improvements(
                section,
                baselines=["ir"],
                candidates=["merged@1"],
                metrics=["m"],
                test=exp.significance_test,
                correction=exp.correction,
            )
    for dtype in DTYPES:
        exp = load(tmp_path, BASE + f"    scoring: {{dtype: {dtype}}}\n").experiment("table1")
        assert isinstance(resolve_dtype(exp.dtype, torch.device("cpu")), torch.dtype)
    with pytest.raises(ConfigError, match=r"fusion\.method: unknown ranx fusion 'magic'"):
        load(tmp_path, BASE + "    fusion: {method: magic}\n")
