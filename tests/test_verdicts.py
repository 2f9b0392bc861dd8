"""'Did merging help?': Θ' against ΘT and the best baseline, on the first screen of results.md."""

from __future__ import annotations

import pytest

from mergekit_ir.errors import ConfigError
from mergekit_ir.evaluation.significance import verdicts
from mergekit_ir.reports.render import render_latex, render_markdown
from mergekit_ir.reports.verdicts import dev_never_beat_theta_t, render_verdicts_markdown
from mergekit_ir.results import (
    AlphaAblation,
    Cell,
    Results,
    Row,
    Section,
    Verdict,
)

QUERIES = [f"q{i}" for i in range(30)]


def cell(values: list[float]) -> Cell:
    return Cell(mean=sum(values) / len(values), per_query=dict(zip(QUERIES, values, strict=True)))


def section() -> Section:
    base = [0.5 + 0.01 * (i % 7) for i in range(30)]
    better = [v + 0.2 + 0.001 * (i % 3) for i, v in enumerate(base)]  # clearly better
    same = [v + (0.001 if i % 2 else -0.001) for i, v in enumerate(base)]  # no difference
    rows = [
        Row("bm25", "BM25", cells={"d": {"NDCG@10": cell([v - 0.1 for v in base])}}),
        Row("ir", "ΘT", cells={"d": {"NDCG@10": cell(base)}}),
        Row("merged@1", "Θ' (α=1)", kind="merged", cells={"d": {"NDCG@10": cell(same)}}),
        Row("merged@best", "Θ' (α=0.3)", kind="merged", cells={"d": {"NDCG@10": cell(better)}}),
    ]
    return Section("t", rows)


def judge(sec: Section, **kw) -> list[Verdict]:
    args = dict(
        candidates=["merged@best", "merged@1"],
        baselines=["bm25", "ir"],
        theta_t="ir",
        datasets=["d"],
        metrics=["NDCG@10"],
    )
    return verdicts(sec, **{**args, **kw})


def test_better_and_no_difference_against_theta_t_and_the_best_baseline():
    found = {(v.candidate, v.against): v for v in judge(section())}
    assert set(found) == {
        ("merged@best", "theta_t"),
        ("merged@best", "best_baseline"),
        ("merged@1", "theta_t"),
        ("merged@1", "best_baseline"),
    }
    tuned = found[("merged@best", "theta_t")]
    assert tuned.outcome == "better" and tuned.delta == pytest.approx(0.201, abs=1e-3)
    assert tuned.threshold == pytest.approx(0.01 / 4)  # 2 candidates × 2 references
    assert found[("merged@best", "best_baseline")].reference == "ir"  # ΘT beats BM25 here
    assert found[("merged@1", "theta_t")].outcome == "no significant difference"
    assert tuned.sentence("Θ' (α=0.3)", "ΘT").startswith(
        "Θ' (α=0.3) is better than ΘT on NDCG@10 by 0.201, p = "
    )


def test_worse_is_said_plainly():
    sec = section()
    sec.rows[1], sec.rows[3] = (
        Row("ir", "ΘT", cells=sec.rows[3].cells),
        Row("merged@best", "Θ' (α=0.3)", cells=sec.rows[1].cells),
    )
    (v,) = judge(sec, candidates=["merged@best"], against=["theta_t"])
    assert v.outcome == "worse" and v.threshold == pytest.approx(0.01)
    assert "is worse than ΘT on NDCG@10 by 0.201" in v.sentence("Θ'", "ΘT")


def test_against_is_configurable_and_checked():
    only = judge(section(), against=["theta_t"])
    assert {v.against for v in only} == {"theta_t"} and len(only) == 2
    assert only[0].threshold == pytest.approx(0.005)  # 2 candidates × 1 reference
    with pytest.raises(ConfigError, match="significance.against: 'bm25' is not one of"):
        judge(section(), against=["bm25"])


def test_verdicts_survive_results_json_and_lead_the_report():
    sec = section()
    sec.verdicts = judge(sec)
    res = Results(experiment="e", metrics=["NDCG@10"], datasets=["d"], sections=[sec])
    again = Results.from_json(res.to_json())
    assert again.sections[0].verdicts == sec.verdicts
    md = render_markdown(again)
    assert md.index("## Did merging help? *t*") < md.index("| Model |")
    assert "Θ' (α=0.3) is better than ΘT on NDCG@10 by 0.201" in md
    assert "| Θ' (α=1) vs ΘT | · " in md
    assert "Outcome" in render_latex(again)


def test_when_dev_never_beat_theta_t_the_report_says_so_and_what_alpha_0_means():
    abl = AlphaAblation(
        values={"d": {"0.5": 0.49, "1.0": 0.47}},
        references={"d": {"ΘT": 0.502, "BM25": 0.4}},
        best="0.5",
        order=["0.5", "1.0"],
    )
    res = Results(metrics=["NDCG@10"], sections=[section()], alpha_ablation={"t": abl})
    note = dev_never_beat_theta_t(res, "t", "d")
    assert note is not None and "no α beat ΘT" in note and "add 0 to merge.alpha" in note
    abl.values["d"]["0.0"] = 0.502
    assert "α = 0 (ΘT itself) was in the grid" in dev_never_beat_theta_t(res, "t", "d")
    abl.values["d"]["0.7"] = 0.51
    assert dev_never_beat_theta_t(res, "t", "d") is None
    assert render_verdicts_markdown(Results(sections=[section()])) == []  # no verdicts: nothing


def test_registry_against_field(tmp_path):
    from mergekit_ir.experiments.registry import load_registry

    text = (
        "datasets:\n  toy: {beir: 'quickstart:toy', test: test, dev: dev}\n"
        "triplets:\n  t: {scorer: {kind: bi-encoder}, pretrained: quickstart:pretrained, "
        "domain: quickstart:domain, ir: quickstart:ir}\n"
        "experiments:\n  e: {triplets: [t], datasets: [toy], significance: {against: %s}}\n"
    )
    path = tmp_path / "r.yaml"
    path.write_text(text % "theta_t")
    assert load_registry(path).experiment("e").significance_against == ("theta_t",)
    path.write_text(text % "[theta_t, bm25]")
    with pytest.raises(ConfigError, match=r"experiments\.e\.significance\.against: "):
        load_registry(path)
