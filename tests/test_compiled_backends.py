"""Compiled scoring backends (ONNX Runtime, OpenVINO) where the weights are fixed: the option,
its cache keys, the first-batch check and its fallback, and scores equal to torch's."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mergekit_ir.errors import CheckpointError, ConfigError, MergeIRError
from mergekit_ir.experiments.runner import settings_identity
from mergekit_ir.plugin_host import catalog
from mergekit_ir.scoring import compiled
from mergekit_ir.scoring.compiled import BACKENDS, FaithfulnessRule
from mergekit_ir.scoring.scorer import ScoringSettings, _pass_items
from tiny_checkpoints import save_cross_encoder, save_llama, save_sentence_transformer, save_t5

pytestmark = pytest.mark.usefixtures("one_thread")

PAIRS = [
    ("cancer tumor", "the tumor cell study"),
    ("cancer tumor", "heart patients risk study"),
    ("cancer tumor", "immune vaccine virus"),
    ("heart risk", "heart patients risk study"),
    ("heart risk", "the vitamin diet insulin glucose lung"),
    ("virus vaccine", "immune vaccine virus"),
    ("virus vaccine", "brain gene protein"),
]


def settings(backend: str, cache: Path | None = None, dtype: str = "fp32") -> ScoringSettings:
    return ScoringSettings("cpu", dtype, 3, False, backend=backend, cache_dir=cache)


# -- the option (fast) ----------------------------------------------------------------------


def test_one_list_of_backends():
    from mergekit_ir.cli import main
    from mergekit_ir.experiments.registry import SCORING_FIELDS

    for command in ("run", "rerank"):
        option = next(p for p in main.commands[command].params if p.name == "backend")
        assert tuple(option.type.choices) == BACKENDS
    assert next(p for p in SCORING_FIELDS if p.name == "backend").choices == BACKENDS


def test_unknown_backend_is_one_line():
    with pytest.raises(ConfigError, match=r"^--backend 'tensorrt': choose one of auto, torch"):
        settings("tensorrt").check_backend()
    result = CliRunner().invoke(
        __import__("mergekit_ir.cli", fromlist=["main"]).main,
        ["rerank", "m", "--scorer", "bi-encoder", "--dataset", "d", "--backend", "tensorrt"],
    )
    assert result.exit_code == 2 and "'tensorrt' is not one of" in result.output


def test_registry_backend_is_checked(tmp_path):
    from mergekit_ir.experiments.registry import load_registry

    reg = tmp_path / "registry.yaml"
    reg.write_text(
        "datasets: {}\ntriplets: {}\nexperiments:\n  e:\n    triplets: []\n    datasets: []\n"
        "    scoring: {backend: onnx-fp16}\n"
    )
    with pytest.raises(ConfigError, match=r"experiments\.e\.scoring\.backend"):
        load_registry(reg)


def test_explicit_compiled_backend_needs_cpu_fp32_and_its_packages(monkeypatch):
    with pytest.raises(MergeIRError, match=r"--backend onnx: exports fp32 weights.*bfloat16"):
        settings("onnx", dtype="bf16").check_backend()
    settings("onnx").check_backend()  # installed here (the dev extra)
    monkeypatch.setitem(compiled.NEEDS, "openvino", ("no_such_runtime_package",))
    with pytest.raises(ConfigError, match=r"needs the 'no_such_runtime_package' package"):
        settings("openvino").check_backend("experiments.e.scoring.backend")
    # auto never refuses: it is torch where the compiled backend cannot run
    settings("auto").check_backend()
    assert settings("auto").resolved_backend("openvino") == ("torch", False)
    assert settings("auto", dtype="bf16").resolved_backend("onnx") == ("torch", False)


# -- cache keys (fast) ----------------------------------------------------------------------


def test_run_cache_key_names_backend_and_precision():
    ids = {b: settings_identity(settings(b), "openvino") for b in BACKENDS}
    assert "backend" not in ids["torch"]  # torch keeps the keys it had before backends
    assert len({repr(v) for v in ids.values()}) == len(BACKENDS)  # none answers another
    assert settings_identity(settings("auto"), "torch") == ids["torch"]  # auto = torch here
    assert "onnx-int8" in ids["onnx-int8"]["backend"]
    assert ids["onnx"]["backend"].startswith("onnx+")
    assert compiled.RULE.identity in ids["auto"]["backend"]


def test_compiled_entry_key_per_backend_precision_weights_and_graph():
    base = ("scorer.X", "embed", {"pooling": "mean"}, ["input_ids"], "w" * 32)
    keys = {compiled.entry_key(*base, rt, pr) for rt, pr in compiled.FILES}
    assert len(keys) == len(compiled.FILES)
    assert compiled.entry_key(*base, "onnx", "fp32") == compiled.entry_key(*base, "onnx", "fp32")
    for changed in (
        ("scorer.X", "embed", {"pooling": "cls"}, ["input_ids"], "w" * 32),
        ("scorer.X", "embed", {"pooling": "mean"}, ["input_ids", "x"], "w" * 32),
        ("scorer.X", "embed", {"pooling": "mean"}, ["input_ids"], "v" * 32),
        ("scorer.Y", "embed", {"pooling": "mean"}, ["input_ids"], "w" * 32),
    ):
        assert compiled.entry_key(*changed, "onnx", "fp32") not in keys


def test_weights_digest_follows_every_weight_and_dtype():
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 3)
    before = compiled.weights_digest({"model": lin})
    assert compiled.weights_digest({"model": lin}) == before
    with torch.no_grad():
        lin.bias[1] += 1e-6
    assert compiled.weights_digest({"model": lin}) != before
    assert compiled.weights_digest({"model": lin.to(torch.bfloat16)}) != before


# -- the first-batch check and where it pays (fast) -------------------------------------------


def test_faithfulness_rule():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=16)
    assert compiled.compare(scores, scores + 1e-6, "fp32").passed
    off = compiled.compare(scores, scores + 1e-2, "fp32")  # a mask traced wrong: ~1e-2
    assert not off.passed and off.max_abs_diff == pytest.approx(1e-2)
    # int8: small noise passes, a reordered batch fails, a NaN fails
    assert compiled.compare(scores, scores + rng.normal(scale=1e-3, size=16), "int8").passed
    assert not compiled.compare(scores, scores[::-1].copy(), "int8").passed
    nan = scores.copy()
    nan[3] = np.nan
    assert compiled.compare(scores, nan, "int8").nonfinite == 1
    assert not compiled.compare(scores, nan, "fp32").passed
    # vectors: each row's dot products with the batch are the ranking compared
    vecs = rng.normal(size=(6, 8))
    assert compiled.compare(vecs, vecs + 1e-4 * rng.normal(size=(6, 8)), "int8").passed
    assert not compiled.compare(vecs, rng.normal(size=(6, 8)), "int8").passed
    assert not compiled.compare(vecs, vecs[:, :4], "fp32").passed  # shapes differ


def test_where_it_pays():
    cost = compiled.EXPORT_COST
    assert not compiled.pays(None, cached=True)
    assert not compiled.pays(cost.min_items - 1, cached=False)
    assert compiled.pays(cost.min_items, cached=False)
    assert compiled.pays(cost.min_items_cached, cached=True)
    assert not compiled.pays(cost.min_items_cached - 1, cached=True)


def test_pass_size_in_the_scorers_unit():
    class Pairs:
        cost_unit = "pair"

    class Texts:
        cost_unit = "document"

    cands = {"q1": {"d1": 1.0, "d2": 0.5}, "q2": {"d2": 1.0, "d3": 0.1, "d4": 0.0}}
    assert _pass_items(Pairs(), "rerank", ({}, cands, {}), {}) == 5
    assert _pass_items(Texts(), "rerank", (), {"queries": {}, "candidates": cands, "docs": {}}) == 6
    pairs = [("a", "x"), ("a", "y"), ("b", "x")]
    assert _pass_items(Pairs(), "score_pairs", (pairs,), {}) == 3
    assert _pass_items(Texts(), "score_pairs", (pairs,), {}) == 4


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory) -> Path:
    return save_cross_encoder(tmp_path_factory.mktemp("ce") / "ce")


@pytest.fixture(scope="module")
def ce_cache(tmp_path_factory) -> Path:
    """One compiled-model cache for the cross-encoder tests: one fp32 export serves them all."""
    return tmp_path_factory.mktemp("ce-cache")


def test_auto_leaves_a_short_pass_to_torch(cross_encoder, tmp_path, monkeypatch):
    kind = catalog().scorer("cross-encoder")
    want = kind.load(cross_encoder, {}, settings("torch")).score_pairs(PAIRS)
    scorer = kind.load(cross_encoder, {}, settings("auto", tmp_path))
    monkeypatch.setattr(scorer, "auto_backend", "onnx")  # as if onnx were measured faster
    assert scorer.settings.resolved_backend(scorer.auto_backend) == ("onnx", False)
    assert scorer.score_pairs(PAIRS) == want
    assert [f.used for f in scorer._compiled.values()] == ["torch"]
    assert not (tmp_path / "compiled").exists()  # nothing exported for 7 pairs


# -- exported for real (slow: torch.export takes seconds even for a tiny BERT) -----------------


def scores_of(kind: str, folder: Path, backend: str, cache: Path, options=None):
    scorer = catalog().scorer(kind).load(folder, options or {}, settings(backend, cache))
    return scorer, scorer.score_pairs(PAIRS)


@pytest.mark.slow
def test_cross_encoder_backends_score_as_torch_and_cache(cross_encoder, ce_cache):
    tmp_path = ce_cache
    _, want = scores_of("cross-encoder", cross_encoder, "torch", tmp_path)
    for backend, atol in (
        ("onnx", 1e-5),
        ("openvino", 1e-5),
        ("onnx-int8", 2e-2),
        ("openvino-int8", 2e-2),
    ):
        scorer, got = scores_of("cross-encoder", cross_encoder, backend, tmp_path)
        (fwd,) = scorer._compiled.values()
        if fwd.used == "fallback":
            # int8 on a random tiny head: its logits are near-tied, so int8 noise may reorder
            # them and the faithfulness check refuses — announced, and torch scores instead
            assert backend.endswith("int8") and not fwd.faithfulness.passed, backend
            assert np.array_equal(got, want), backend
            assert any("not used" in w for w in scorer.warnings), backend
            continue
        assert fwd.used == "compiled" and fwd.faithfulness.passed, (backend, scorer.warnings)
        assert np.allclose(got, want, atol=atol), backend
        assert not scorer.warnings
    # one entry per (runtime, precision), all from one fp32 export
    entries = sorted(p.parent.name for p in (tmp_path / "compiled").glob("*/compiled.json"))
    assert 2 <= len(entries) <= 4  # an int8 entry the check refused may be missing
    # a second scorer of the same weights loads the compiled model from the cache
    scorer, got = scores_of("cross-encoder", cross_encoder, "onnx", tmp_path)
    (fwd,) = scorer._compiled.values()
    assert fwd.cached is True and np.allclose(got, want, atol=1e-5)


@pytest.mark.slow
def test_forced_faithfulness_failure_falls_back_to_torch(
    cross_encoder, ce_cache, monkeypatch, caplog
):
    tmp_path = ce_cache
    _, want = scores_of("cross-encoder", cross_encoder, "torch", tmp_path)
    monkeypatch.setattr(compiled, "RULE", FaithfulnessRule(fp32_atol=-1.0))  # nothing passes
    with caplog.at_level(logging.WARNING):
        scorer, got = scores_of("cross-encoder", cross_encoder, "onnx", tmp_path)
    assert got == want  # torch's scores, bit for bit
    (fwd,) = scorer._compiled.values()
    assert fwd.used == "fallback"
    (line,) = scorer.warnings
    assert "--backend onnx not used (its first batch differs from torch fp32" in line
    assert line.endswith("scored by torch") and "\n" not in line
    assert sum("--backend onnx not used" in r.getMessage() for r in caplog.records) == 1
    assert scorer.score_pairs(PAIRS) == want  # later calls: torch, no second warning
    assert len(scorer.warnings) == 1


@pytest.mark.slow
def test_bi_encoder_and_splade_onnx_score_as_torch(tmp_path, monkeypatch):
    """ONNX scores as torch for both; and SPLADE's ``auto`` scores a pass long enough to pay
    (here: any, by a lowered bar) with OpenVINO, equal to torch too."""
    from tiny_checkpoints import save_word_bert

    bi = save_sentence_transformer(tmp_path / "st")
    mlm = save_word_bert(tmp_path / "mlm", head="mlm")
    for kind, folder in (("bi-encoder", bi), ("splade", mlm)):
        _, want = scores_of(kind, folder, "torch", tmp_path)
        scorer, got = scores_of(kind, folder, "onnx", tmp_path)
        (fwd,) = scorer._compiled.values()  # queries and documents: one graph
        assert fwd.used == "compiled", scorer.warnings
        assert np.allclose(got, want, atol=1e-5), kind
    monkeypatch.setattr(compiled, "EXPORT_COST", compiled.ExportCost(1, 1))
    scorer, got = scores_of("splade", mlm, "auto", tmp_path)
    (fwd,) = scorer._compiled.values()
    assert (fwd.used, fwd.backend) == ("compiled", "openvino"), scorer.warnings
    assert np.allclose(got, want, atol=1e-5)


def test_auto_is_openvino_only_where_it_was_measured_to_pay():
    """``auto`` is OpenVINO for SPLADE and the bi- and cross-encoder (measured faster in two
    runs each, and exact); monoT5 and the causal LM stay torch (1.2× in one run: not worth an
    export per state)."""
    kinds = {name: catalog().scorer(name).load for name in catalog().scorers}  # the classes
    for name in ("splade", "bi-encoder", "cross-encoder"):
        assert getattr(kinds[name], "auto_backend", None) == "openvino", name
    for name in ("monot5", "causal-lm"):
        assert getattr(kinds[name], "auto_backend", "torch") == "torch", name
    # OpenVINO from the torch program only where that route measured faster than from ONNX
    for name, direct in {"bi-encoder": True, "cross-encoder": True, "splade": False}.items():
        assert getattr(kinds[name], "openvino_from_torch", False) is direct, name
    auto = settings("auto")
    assert auto.resolved_backend("openvino") == ("openvino", False)  # openvino is in dev
    # not in fp32 (or not on the CPU): torch, never an error
    assert settings("auto", dtype="bf16").resolved_backend("openvino") == ("torch", False)


@pytest.mark.slow
def test_monot5_and_causal_lm_onnx_and_openvino_score_as_torch(tmp_path):
    """Both compile, and OpenVINO reads their ONNX export (its PyTorch frontend fails on T5 and
    gives a Llama non-finite scores: ``openvino_from_torch`` is off for both)."""
    for kind, folder, options in (
        ("monot5", save_t5(tmp_path / "t5"), {}),
        ("causal-lm", save_llama(tmp_path / "llama"), {"mode": "relevance_token"}),
    ):
        _, want = scores_of(kind, folder, "torch", tmp_path, options)
        for backend in ("onnx", "openvino"):
            scorer, got = scores_of(kind, folder, backend, tmp_path, options)
            assert not scorer.openvino_from_torch
            (fwd,) = scorer._compiled.values()
            assert fwd.used == "compiled", scorer.warnings
            assert np.allclose(got, want, atol=1e-5), (kind, backend)


@pytest.mark.slow
def test_openvino_converts_an_encoder_from_torch_and_else_from_onnx(
    cross_encoder, tmp_path, monkeypatch
):
    """An encoder's OpenVINO model comes from the torch program (no ONNX file is written); if
    that conversion fails, from the ONNX export — the same scores either way."""
    _, want = scores_of("cross-encoder", cross_encoder, "torch", tmp_path)
    scorer, got = scores_of("cross-encoder", cross_encoder, "openvino", tmp_path / "direct")
    (fwd,) = scorer._compiled.values()
    assert scorer.openvino_from_torch and fwd.used == "compiled", scorer.warnings
    assert np.allclose(got, want, atol=1e-5)
    assert not list((tmp_path / "direct").rglob("*.onnx"))

    def fails(*args, **kwargs):
        raise CheckpointError("OpenVINO conversion failed for the model (planted)")

    monkeypatch.setattr(compiled, "export_openvino", fails)
    scorer, got = scores_of("cross-encoder", cross_encoder, "openvino", tmp_path / "via-onnx")
    (fwd,) = scorer._compiled.values()
    assert fwd.used == "compiled" and not scorer.warnings
    assert np.allclose(got, want, atol=1e-5)
    assert len(list((tmp_path / "via-onnx").rglob("model.onnx"))) == 1


@pytest.mark.slow
def test_a_sweep_point_is_its_own_compiled_model(tiny_triplet, tmp_path):
    """In-place weights: Θ'(α) is exported for its own weights, never answered by ΘT's."""
    from mergekit_ir.merging.checkpoint import open_checkpoint
    from mergekit_ir.merging.engine import MergeJob, build_plan
    from mergekit_ir.merging.sweep import InPlaceSweep
    from mergekit_ir.merging.task_vector import TaskVector

    kind = catalog().scorer("cross-encoder")
    method = catalog().merge_method("task_arithmetic")
    pre = open_checkpoint(str(tiny_triplet["pretrained"]))

    def job():
        tv = TaskVector.from_checkpoints(pre, open_checkpoint(str(tiny_triplet["domain"])))
        params = {p.name: p.default for p in method.params}
        return MergeJob(
            open_checkpoint(str(tiny_triplet["ir"])), [tv], method, params, pretrained=pre
        )

    scorers = {}
    for backend in ("torch", "onnx"):
        torch.manual_seed(0)
        s = kind.load(tiny_triplet["ir"], {}, settings(backend, tmp_path))
        j = job()
        scorers[backend] = (s, InPlaceSweep(s.model, j, build_plan(j)))
    got = {}
    for backend, (s, sweep) in scorers.items():
        with sweep.merged({"alpha": 0.5}):
            got[backend] = s.score_pairs(PAIRS)
        got[backend + "@ir"] = s.score_pairs(PAIRS)
    assert np.allclose(got["onnx"], got["torch"], atol=1e-5)
    assert np.allclose(got["onnx@ir"], got["torch@ir"], atol=1e-5)
    assert not np.allclose(got["torch"], got["torch@ir"], atol=1e-5)  # the point moved scores
    assert len(list((tmp_path / "compiled").glob("*/compiled.json"))) == 2
