"""AdaMerging for re-rankers: groups and layer-wise α by hand, the learnt coefficients on a tiny
triplet with a planted better layer, the selector's parameters, and the guard keeping ΘT on a
planted harmful vector (tests/alpha_toy.py's collection)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from alpha_toy import COMPETITOR, WORDS, K, _directions, write_registry
from click.testing import CliRunner

from mergekit_ir import ConfigError
from mergekit_ir.params import TensorPosition, layer_index, resolve
from mergekit_ir.tuning.adamerging import (
    LearnSettings,
    MergeAccess,
    Query,
    coefficient_rules,
    group_of,
    learn,
)
from mergekit_ir.tuning.selector import alpha_value

pytestmark = pytest.mark.usefixtures("one_thread")


def test_groups_and_their_layer_wise_alpha():
    keys = [
        "embeddings.word_embeddings.weight",
        "encoder.layer.0.attention.self.query.weight",
        "encoder.layer.1.output.dense.bias",
        "encoder.layer.10.output.dense.bias",
        "pooler.dense.weight",
    ]
    groups = [group_of(k, "block") for k in keys]
    assert groups == ["embeddings", "block 0", "block 1", "block 10", "other"]
    coef = {"embeddings": 0.5, "block 0": 0.1, "block 1": -0.2, "block 10": 1.0, "other": 0.7}
    rules = coefficient_rules(coef, "block", default=0.3)
    for key, g in zip(keys, groups, strict=True):
        pos = TensorPosition(key, layer_index(key), 11)
        assert resolve(rules, pos) == coef[g], key
    # per tensor: each key its own value, the rest the default
    rules = coefficient_rules({k: i / 10 for i, k in enumerate(keys[:2])}, "tensor", default=0.3)
    assert resolve(rules, TensorPosition(keys[1])) == 0.1
    assert resolve(rules, TensorPosition("lm_head.weight")) == 0.3
    # the α label of a learnt value reads back as that value, off the grid
    from mergekit_ir.results import alpha_label

    assert alpha_value(alpha_label(rules), (0.5, 1.0)) == rules


def _layered(root: Path, noise: float = 1.0) -> dict[str, Path]:
    """alpha_toy's planted bi-encoder with one transformer block that is the identity in ΘT
    and Θ0 (its output projections are 0: residual + LayerNorm of a LayerNorm'd input); ΘD
    adds the planted embedding vector (best α 0.5) and random noise on the block's output
    projections (harmful at any coefficient)."""
    from transformers import BertModel

    from mergekit_ir.references.tiny_models import bert_config, word_tokenizer

    tok = word_tokenizer(WORDS)
    vocab = tok.get_vocab()
    u = _directions(32, K + 1)
    ir = torch.zeros(len(tok), 32, dtype=torch.float64)
    for t in range(K):
        ir[vocab[f"q{t}"]] = u[t]
        ir[vocab[f"e{t}"]] = COMPETITOR * u[t] + math.sqrt(1 - COMPETITOR**2) * u[K]
    dom = ir.clone()
    for t in range(K):
        right, wrong = u[t], u[(t + 1) % K]
        ir[vocab[f"d{t}"]], dom[vocab[f"d{t}"]] = wrong, wrong + 2 * (right - wrong)
    gen = torch.Generator().manual_seed(1)
    out = {}
    for name, emb, harm in (("ir", ir, 0.0), ("pretrained", ir, 0.0), ("domain", dom, noise)):
        torch.manual_seed(0)
        model = BertModel(bert_config(len(tok), num_hidden_layers=1)).eval()
        with torch.no_grad():
            e = model.embeddings
            e.word_embeddings.weight.copy_(emb.float())
            e.position_embeddings.weight.zero_()
            e.token_type_embeddings.weight.zero_()
            layer = model.encoder.layer[0]
            for dense in (layer.attention.output.dense, layer.output.dense):
                dense.bias.zero_()
                dense.weight.copy_(harm * torch.randn(dense.weight.shape, generator=gen))
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        out[name] = root / name
    return out


def _access(models: dict[str, Path], method: str = "task_arithmetic") -> MergeAccess:
    from mergekit_ir.merging.checkpoint import open_checkpoint
    from mergekit_ir.merging.engine import MergeJob, build_plan
    from mergekit_ir.merging.sweep import InPlaceSweep
    from mergekit_ir.merging.task_vector import TaskVector
    from mergekit_ir.plugin_host import catalog
    from mergekit_ir.scoring.scorer import ScoringSettings

    scorer = (
        catalog()
        .scorer("bi-encoder")
        .load(
            models["ir"],
            {"pooling": "mean", "similarity": "cosine"},
            ScoringSettings("cpu", "fp32"),
        )
    )
    ir, pre, dom = (open_checkpoint(str(models[k])) for k in ("ir", "pretrained", "domain"))
    job = MergeJob(
        ir,
        [TaskVector.from_checkpoints(pre, dom)],
        catalog().merge_method("task_arithmetic"),
        {"alpha": 1.0},
        pre,
    )
    sweep = InPlaceSweep(scorer.model, job, build_plan(job))
    return MergeAccess(scorer, sweep.slots, method)


def _queries() -> tuple[list[Query], list[Query]]:
    """Test queries over every document (unlabelled), and title pseudo-queries ("common qt")
    with their source document "common dt" first among 7 negatives."""
    docs = [f"common d{t}" for t in range(K)] + [f"common e{t}" for t in range(K)]
    tests = [Query(f"common q{t}", docs) for t in range(K)]
    pseudo = [
        Query(f"common q{t}", [f"common d{t}", *[d for d in docs if d != f"common d{t}"][:7]], 0)
        for t in range(K)
    ]
    return tests, pseudo


def test_the_learnt_coefficients_move_toward_the_planted_layer(tmp_path):
    access = _access(_layered(tmp_path))
    before = {k: v.clone() for k, v in access.scorer.model.state_dict().items()}
    tests, pseudo = _queries()
    result = learn(access, tests, pseudo, LearnSettings(steps=12, objective="contrastive"))
    c = result.coefficients
    assert c["embeddings"] > 0.5  # from 0.3 up to (and past) the planted 0.5
    assert c["block 0"] < 0.1  # the block whose vector only hurts is turned down
    assert c["other"] == pytest.approx(0.3)  # the pooler, unused by the scorer: no gradient
    assert len(result.losses) == 12 and result.losses[-1] < result.losses[0]
    assert result.temperature > 0
    after = access.scorer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # ΘT untouched
    assert all(not p.requires_grad or p.grad is None for p in access.scorer.model.parameters())
    # the entropy objective runs too (its direction on this toy is not asserted)
    ent = learn(access, tests, pseudo, LearnSettings(steps=2, objective="entropy"))
    assert set(ent.coefficients) == set(c)


def test_learning_refuses_other_methods_and_empty_objectives(tmp_path):
    from alpha_toy import build_models

    access = _access(build_models(tmp_path, "planted"), method="ties")
    tests, pseudo = _queries()
    with pytest.raises(ConfigError, match="task arithmetic, not of 'ties'"):
        learn(access, tests, pseudo, LearnSettings(steps=1))
    access.method = "task_arithmetic"
    with pytest.raises(ConfigError, match="no queries for the contrastive objective"):
        learn(access, tests, [], LearnSettings(steps=1, objective="contrastive"))


@pytest.mark.parametrize(
    ("tuning", "says"),
    [
        ("{alpha: {selector: adamerging, steps: 0}}", "experiments.toy.tuning.alpha.steps: 0 is outside [1, 1000]"),
        ("{alpha: {selector: adamerging, lr: 2}}", "experiments.toy.tuning.alpha.lr: 2 is outside"),
        ("{alpha: {selector: adamerging, objective: ce}}", "experiments.toy.tuning.alpha.objective: 'ce' is not one of entropy, contrastive, both"),
        ("{alpha: {selector: adamerging, granularity: row}}", "experiments.toy.tuning.alpha.granularity"),
        ("{alpha: {selector: adamerging, candidates: 1}}", "experiments.toy.tuning.alpha.candidates: 1 is outside [2, 1000]"),
        ("{alpha: {selector: adamerging, temperature: 0}}", "experiments.toy.tuning.alpha.temperature: 0 is outside"),
    ],
)  # fmt: skip
def test_bad_adamerging_settings_are_one_line_naming_the_yaml_path(tmp_path, tuning, says):
    from mergekit_ir.experiments.registry import load_registry

    reg = write_registry(tmp_path, tuning)
    with pytest.raises(ConfigError) as err:
        load_registry(reg)
    assert says in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow
def test_the_guard_keeps_theta_t_on_a_harmful_vector(tmp_path):
    """A run with adamerging on the harmful toy: the learnt merge is no better than ΘT on the
    held-out pseudo-queries, so the run says so and Θ'(tuned α) is ΘT; the coefficients are
    stored in results.json and plotted."""
    from mergekit_ir.cli import main

    reg = write_registry(
        tmp_path,
        "{alpha: {selector: adamerging, objective: contrastive, steps: 6, pseudo: 6, "
        "guard_queries: 6, candidates: 8, bootstrap: 200}}",
        kind="harmful",
        titled=True,
    )
    reg.write_text(
        reg.read_text().replace(
            "alpha: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]", "alpha: [0.5, 1.0]"
        )
    )
    out = tmp_path / "out"
    res = CliRunner().invoke(
        main,
        ["run", "toy", "--registry", str(reg), "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "-q"],
        catch_exceptions=False,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "keeping ΘT" in res.output
    raw = json.loads((out / "results.json").read_text())
    choice = raw["alpha_selection"]["toy-harmful"]["choices"]["adamerging:title"]["toy"]
    assert choice["guarded"] and choice["alpha"] == "0"
    assert choice["gain_interval"][0] <= 0
    coef = choice["diagnostics"]["coefficients"]
    assert set(coef) == {"embeddings", "other"} and len(choice["diagnostics"]["losses"]) == 6
    best = next(r for r in raw["sections"][0]["rows"] if r["key"] == "merged@best")
    assert best["alpha"]["toy"] == "0"
    assert (out / "adamerging.png").is_file()
    assert "| embeddings |" in (out / "selection.md").read_text()
