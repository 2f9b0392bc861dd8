"""bf16 scoring that stays faithful: the sweep merges from fp32 masters, ``--dtype auto``
picks bf16 only on bf16 hardware, and a calibration check falls back to fp32 per model state."""

from __future__ import annotations

import logging

import pytest
import torch

from mergekit_ir.experiments.runner import settings_identity
from mergekit_ir.merging.checkpoint import open_checkpoint
from mergekit_ir.merging.engine import MergeJob, build_plan, merge_to_folder
from mergekit_ir.merging.sweep import InPlaceSweep
from mergekit_ir.merging.task_vector import TaskVector
from mergekit_ir.plugin_host import catalog
from mergekit_ir.scoring import calibration
from mergekit_ir.scoring import scorer as scorer_mod
from mergekit_ir.scoring.scorer import ScoringSettings, cpu_has_bf16_hardware, resolve_dtype

PAIRS = [
    ("cancer tumor", "the tumor cell study"),
    ("cancer tumor", "heart patients risk study"),
    ("cancer tumor", "immune vaccine virus"),
    ("heart risk", "heart patients risk study"),
    ("heart risk", "the vitamin diet insulin glucose lung"),
    ("heart risk", "the tumor cell study"),
    ("virus vaccine", "immune vaccine virus"),
    ("virus vaccine", "brain gene protein"),
    ("diet", "the vitamin diet insulin glucose lung"),
    ("diet", "cancer treatment patients"),
]
QUERIES = {"q1": "cancer tumor", "q2": "heart risk", "q3": "virus vaccine"}
DOCS = {
    "d1": "the tumor cell study",
    "d2": "heart patients risk study",
    "d3": "immune vaccine virus",
    "d4": "the vitamin diet insulin glucose lung",
    "d5": "brain gene protein",
}
CANDIDATES = {q: {d: float(5 - i) for i, d in enumerate(DOCS)} for q in QUERIES}


def settings(dtype: str) -> ScoringSettings:
    return ScoringSettings(device="cpu", dtype=dtype, batch_size=3, show_progress=False)


@pytest.fixture
def bf16_cpu(monkeypatch):
    """This CPU counts as one with bf16 hardware: ``auto`` resolves to bf16, calibrated."""
    monkeypatch.setenv(scorer_mod.CPU_BF16_ENV, "1")


def make_job(triplet, ir: str, method: str, extra: dict | None = None):
    mm = catalog().merge_method(method)
    pre = open_checkpoint(str(triplet["pretrained"]))
    params = {p.name: p.default for p in mm.params} | (extra or {})
    job = MergeJob(
        open_checkpoint(str(triplet[ir])),
        [TaskVector.from_checkpoints(pre, open_checkpoint(str(triplet["domain"])))],
        mm,
        params,
        pretrained=pre,
    )
    return job, params


# -- auto: which dtype -------------------------------------------------------------------


def test_bf16_hardware_detection(monkeypatch):
    monkeypatch.setattr(scorer_mod.torch.backends.mkldnn, "is_available", lambda: True)
    for capability, flags, fast in [
        ("AVX512", {"avx512f", "avx512_bf16"}, True),
        ("AVX512", {"avx512f", "amx_bf16", "amx_tile"}, True),
        ("AVX512", {"avx512f", "avx512_vnni"}, False),  # AVX-512 without bf16 arithmetic
        ("AVX2", {"avx2"}, False),
        ("AVX2", {"avx2", "avx512_bf16"}, False),  # torch runs its AVX2 kernels here
    ]:
        monkeypatch.setattr(
            scorer_mod.torch.backends.cpu, "get_cpu_capability", lambda c=capability: c
        )
        monkeypatch.setattr(scorer_mod, "_cpuinfo_flags", lambda f=flags: frozenset(f))
        assert cpu_has_bf16_hardware() is fast, (capability, flags)


@pytest.mark.parametrize(
    ("hardware", "policy", "env", "expected"),
    [
        (True, True, None, torch.bfloat16),  # bf16 hardware, bf16 made the default
        (True, False, None, torch.float32),  # the shipped policy (the NDCG gate failed)
        (False, True, None, torch.float32),  # no bf16 hardware: never by itself
        (False, False, "1", torch.bfloat16),  # asked for
        (True, True, "0", torch.float32),  # refused
    ],
)
def test_auto_dtype_on_cpu(monkeypatch, hardware, policy, env, expected):
    cpu = torch.device("cpu")
    monkeypatch.setattr(scorer_mod, "cpu_has_bf16_hardware", lambda: hardware)
    monkeypatch.setattr(scorer_mod, "AUTO_CPU_BF16", policy)
    if env is None:
        monkeypatch.delenv(scorer_mod.CPU_BF16_ENV, raising=False)
    else:
        monkeypatch.setenv(scorer_mod.CPU_BF16_ENV, env)
    assert resolve_dtype("auto", cpu) == expected
    assert settings("auto").calibrates == (expected == torch.bfloat16)
    assert resolve_dtype("fp32", cpu) == torch.float32  # explicit dtypes are left alone
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    assert not settings("bf16").calibrates


def test_cache_identity_keeps_the_three_apart(bf16_cpu):
    auto, bf16, fp32 = settings("auto"), settings("bf16"), settings("fp32")
    assert auto.torch_dtype == torch.bfloat16 and auto.calibrates
    assert not bf16.calibrates and not fp32.calibrates
    keys = {repr(settings_identity(s)) for s in (auto, bf16, fp32)}
    assert len(keys) == 3  # a bf16 (or possibly fp32-fallback) entry never answers another
    assert settings_identity(fp32)["dtype"] == "float32"
    assert settings_identity(bf16)["dtype"] == "bfloat16"
    assert calibration.RULE.identity in settings_identity(auto)["dtype"]


def test_auto_without_bf16_hardware_is_plain_fp32(monkeypatch):
    monkeypatch.setenv(scorer_mod.CPU_BF16_ENV, "0")
    auto = settings("auto")
    assert auto.torch_dtype == torch.float32 and not auto.calibrates
    assert settings_identity(auto) == settings_identity(settings("fp32"))


# -- the rule ------------------------------------------------------------------------------


def test_kendall_tau_and_rule():
    tau = calibration.kendall_tau
    assert tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert tau([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(1 - 2 / 6)
    assert tau([1, 1, 1], [2, 2, 2]) == 1.0 and tau([1, 1, 1], [1, 2, 3]) == 0.0
    rule = calibration.RULE
    n, k = rule.queries, rule.docs_per_query
    ref = [[float(i) for i in range(k)] for _ in range(n)]
    assert calibration.compare(ref, ref).passed

    def swapped(swaps: dict[int, list[int]]) -> list[list[float]]:
        """``ref`` with adjacent documents (i, i+1) swapped in the given queries."""
        out = [list(r) for r in ref]
        for q, positions in swaps.items():
            for i in positions:
                out[q][i], out[q][i + 1] = out[q][i + 1], out[q][i]
        return out

    one = 1 - 2 / (k * (k - 1) / 2)  # τ of a query with one swapped pair
    # one swapped pair in each of m queries: mean τ = 1 − m·(1 − one)/n
    for m in range(n + 1):
        result = calibration.compare(ref, swapped({q: [q % (k - 1)] for q in range(m)}))
        assert result.mean_tau == pytest.approx(1 - m * (1 - one) / n)
        assert result.passed == (result.mean_tau >= rule.min_mean_tau)
    # the per-query floor: a query whose head is reordered fails alone
    bad = swapped({0: [0, 2, 4]})  # three swaps in one query
    result = calibration.compare(ref, bad)
    assert result.min_tau == pytest.approx(1 - 6 / (k * (k - 1) / 2))
    assert result.min_tau < rule.min_query_tau and not result.passed
    assert calibration.compare(ref, [list(reversed(r)) for r in ref]).mean_tau == -1.0
    nan = [list(r) for r in ref]
    nan[3][2] = float("nan")
    result = calibration.compare(ref, nan)
    assert not result.passed and result.nonfinite == 1


def test_sample_takes_the_head_of_a_few_queries():
    rule = calibration.CalibrationRule(queries=2, docs_per_query=3)
    groups = calibration.sample_from_rerank(QUERIES, CANDIDATES, DOCS, rule)
    assert len(groups) == 2 and all(len(g) == 3 for g in groups)
    assert groups[0] == [("cancer tumor", DOCS[d]) for d in ("d1", "d2", "d3")]
    pair_groups = calibration.sample_from_pairs(PAIRS, rule)
    assert [len(g) for g in pair_groups] == [3, 2]  # cancer (3 pairs), virus (2)
    assert calibration.sample_from_pairs([("a", "b")], rule) == []  # nothing to rank


# -- part 1: the in-place sweep under bf16 ---------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "ir", "method", "extra"),
    [
        ("bi-encoder", "ir_base", "task_arithmetic", {}),
        ("cross-encoder", "ir", "task_arithmetic", {}),
        ("cross-encoder", "ir", "ties", {"density": 0.5}),
    ],
)
def test_bf16_sweep_equals_fresh_bf16_load(tiny_triplet, tmp_path, kind, ir, method, extra):
    scorer_kind = catalog().scorer(kind)
    job, params = make_job(tiny_triplet, ir, method, extra)
    plan = build_plan(job)
    bf16 = settings("bf16")
    scorer = scorer_kind.load(tiny_triplet[ir], {}, bf16)
    assert next(scorer.model.parameters()).dtype == torch.bfloat16
    sweep = InPlaceSweep(scorer.model, job, plan)
    # the masters are fp32 (ΘT from its checkpoint, not the bf16 weights), and so is τ
    assert all(s.theta_t.dtype == torch.float32 for s in sweep.slots)
    assert all(t.dtype == torch.float32 for s in sweep.slots for t in s.taus)
    stored = open_checkpoint(str(tiny_triplet[ir]))
    slot = sweep.slots[0]
    assert torch.equal(slot.theta_t, stored.get(slot.entry.name).float())
    for alpha in (0.3, 1.0, 0.7):
        sweep.apply({"alpha": alpha})
        live = scorer.score_pairs(PAIRS)
        out = tmp_path / f"{method}-{alpha}"
        job.params = {**params, "alpha": alpha}
        merge_to_folder(job, out, progress=False, plan=plan)
        fresh = scorer_kind.load(out, {}, bf16)
        assert live == fresh.score_pairs(PAIRS), alpha  # bit for bit
        fresh_state = fresh.model.state_dict()
        for name, t in scorer.model.state_dict().items():
            assert torch.equal(t, fresh_state[name]), (alpha, name)
    sweep.restore()
    again = scorer_kind.load(tiny_triplet[ir], {}, bf16)
    assert scorer.score_pairs(PAIRS) == again.score_pairs(PAIRS)


def test_bf16_sweep_does_not_merge_from_bf16_weights(tiny_triplet):
    """What the masters buy: merging from bf16 ΘT/τ (the old way) gives other weights."""
    job, _ = make_job(tiny_triplet, "ir", "task_arithmetic")
    scorer = catalog().scorer("cross-encoder").load(tiny_triplet["ir"], {}, settings("bf16"))
    sweep = InPlaceSweep(scorer.model, job, build_plan(job))
    sweep.apply({"alpha": 0.3})
    differs = 0
    for slot in sweep.slots:
        naive = (slot.theta_t.bfloat16().float() + 0.3 * slot.taus[0].bfloat16().float()).bfloat16()
        differs += int(not torch.equal(naive, slot.target))
    assert differs > 0


# -- part 2: calibration and the fp32 fallback ------------------------------------------------


def test_calibration_pass_scores_in_bf16(tiny_triplet, bf16_cpu, monkeypatch):
    kind = catalog().scorer("cross-encoder")
    calls = []
    real = calibration.compare

    def passing(ref, got, rule=calibration.RULE):
        calls.append((ref, got))
        return calibration.CalibrationResult(True, 1.0, 1.0, len(ref), sum(map(len, ref)))

    monkeypatch.setattr(calibration, "compare", passing)
    scorer = kind.load(tiny_triplet["ir"], {}, settings("auto"))
    assert scorer.dtype == torch.bfloat16
    scores = scorer.score_pairs(PAIRS)
    assert scores == kind.load(tiny_triplet["ir"], {}, settings("bf16")).score_pairs(PAIRS)
    scorer.score_pairs(PAIRS)
    assert len(calls) == 1  # once per model state
    ref, got = calls[0]
    # the reference really is fp32: the same pairs as an fp32 load scores them
    fp32 = kind.load(tiny_triplet["ir"], {}, settings("fp32"))
    flat = fp32.score_pairs([p for g in calibration.sample_from_pairs(PAIRS) for p in g])
    assert [x for g in ref for x in g] == flat
    assert real(ref, ref).passed
    assert not scorer.warnings
    assert scorer.truncation.texts == 2 * len(PAIRS)  # the sample is not counted


def test_calibration_failure_falls_back_to_fp32(tiny_triplet, bf16_cpu, monkeypatch, caplog):
    """Noise injected into the bf16 side fails the real rule; the model is scored in fp32."""
    real = calibration.compare
    gen = torch.Generator().manual_seed(0)

    def noisy(ref, got, rule=calibration.RULE):
        return real(ref, [[g + 10 * float(torch.randn(1, generator=gen)) for g in q] for q in got])

    monkeypatch.setattr(calibration, "compare", noisy)
    kind = catalog().scorer("cross-encoder")
    scorer = kind.load(tiny_triplet["ir"], {}, settings("auto"))
    with caplog.at_level(logging.INFO, logger="mergekit_ir"):
        scores = scorer.score_pairs(PAIRS)
        again = scorer.score_pairs(PAIRS)
    fp32 = kind.load(tiny_triplet["ir"], {}, settings("fp32")).score_pairs(PAIRS)
    assert scores == fp32 and again == fp32  # bit for bit an fp32 run
    assert not scorer.calibrations[calibration.LOADED].passed
    warned = [r for r in caplog.records if "scored in fp32" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING  # one line
    assert len(scorer.warnings) == 1 and "scored in fp32" in scorer.warnings[0]
    assert str(tiny_triplet["ir"]) in scorer.warnings[0]
    assert next(scorer.model.parameters()).dtype == torch.bfloat16  # the live model is untouched


def test_calibration_through_rerank(tiny_triplet, bf16_cpu, monkeypatch):
    """A scorer with its own ``rerank`` (the bi-encoder) calibrates on it, from the first-stage
    head of a few queries, and falls back as a whole."""
    seen = []

    def failing(ref, got, rule=calibration.RULE):
        seen.append(ref)
        return calibration.CalibrationResult(False, 0.1, -0.2, len(ref), sum(map(len, ref)))

    monkeypatch.setattr(calibration, "compare", failing)
    kind = catalog().scorer("bi-encoder")
    scorer = kind.load(tiny_triplet["ir_base"], {}, settings("auto"))
    run = scorer.rerank(QUERIES, CANDIDATES, DOCS)
    fp32 = kind.load(tiny_triplet["ir_base"], {}, settings("fp32"))
    assert run == fp32.rerank(QUERIES, CANDIDATES, DOCS)
    assert len(seen) == 1 and [len(g) for g in seen[0]] == [5, 5, 5]


def test_sweep_points_are_calibrated_each(tiny_triplet, tmp_path, bf16_cpu, monkeypatch):
    """ΘT passes, Θ'(0.4) fails (forced): ΘT scores in bf16, Θ'(0.4) exactly as an fp32 load
    of the merged checkpoint, Θ'(0.8) in bf16 again; each state is calibrated once."""
    verdicts = iter([True, False, True])
    decided = []

    def scripted(ref, got, rule=calibration.RULE):
        decided.append(next(verdicts))
        return calibration.CalibrationResult(decided[-1], 1.0, 1.0, len(ref), sum(map(len, ref)))

    monkeypatch.setattr(calibration, "compare", scripted)
    kind = catalog().scorer("cross-encoder")
    job, params = make_job(tiny_triplet, "ir", "ties", {"density": 0.5})
    plan = build_plan(job)
    scorer = kind.load(tiny_triplet["ir"], {}, settings("auto"))
    sweep = InPlaceSweep(scorer.model, job, plan)
    bf16_ir = kind.load(tiny_triplet["ir"], {}, settings("bf16")).score_pairs(PAIRS)
    assert scorer.score_pairs(PAIRS) == bf16_ir
    expected = {}
    for alpha in (0.4, 0.8):
        out = tmp_path / f"m{alpha}"
        job.params = {**params, "alpha": alpha}
        merge_to_folder(job, out, progress=False, plan=plan)
        expected[alpha] = {
            d: kind.load(out, {}, settings(d)).score_pairs(PAIRS) for d in ("fp32", "bf16")
        }
    for _ in range(2):  # back and forth, as the runner goes per split: decisions are kept
        with sweep.merged({"alpha": 0.4}):
            assert scorer.score_pairs(PAIRS) == expected[0.4]["fp32"]
        assert scorer.score_pairs(PAIRS) == bf16_ir
        with sweep.merged({"alpha": 0.8}):
            assert scorer.score_pairs(PAIRS) == expected[0.8]["bf16"]
    assert decided == [True, False, True]
    assert len(scorer.warnings) == 1 and "sweep point" in scorer.warnings[0]
    assert '"alpha": 0.4' in scorer.warnings[0]


# -- end to end: the runner's cache keys and report notes ------------------------------------


@pytest.mark.slow
def test_run_fallback_reaches_notes_and_keeps_cache_apart(tmp_path, monkeypatch):
    """`mergeir run` with auto → bf16 (forced) and every calibration failing scores every model
    in fp32: the numbers equal an fp32 run's, the fallback is in the report notes, and the fp32
    run's cache entries (same cache folder) do not answer the auto run."""
    import json
    from pathlib import Path

    from click.testing import CliRunner

    from mergekit_ir.cli import main

    registry = str(Path(__file__).resolve().parents[1] / "registry.yaml")
    cache = tmp_path / "cache"

    def run(out: str, dtype: str) -> dict:
        res = CliRunner().invoke(
            main,
            [
                "run",
                "--registry",
                registry,
                "--out",
                str(tmp_path / out),
                "--cache-dir",
                str(cache),
                "--dtype",
                dtype,
                "-q",
            ],
            catch_exceptions=False,
        )
        assert res.exit_code == 0, res.output
        return json.loads((tmp_path / out / "results.json").read_text())

    def cells(res: dict) -> dict:
        return {
            (s["triplet"], r["key"], d, m): c["mean"]
            for s in res["sections"]
            for r in s["rows"]
            for d, cs in r["cells"].items()
            for m, c in cs.items()
        }

    fp32 = run("fp32", "fp32")
    calls = []

    def failing(ref, got, rule=calibration.RULE):
        calls.append(len(ref))
        return calibration.CalibrationResult(False, 0.5, 0.0, len(ref), sum(map(len, ref)))

    monkeypatch.setenv(scorer_mod.CPU_BF16_ENV, "1")
    monkeypatch.setattr(calibration, "compare", failing)
    auto = run("auto", "auto")
    assert calls  # scored (and calibrated), not read from the fp32 run's cache entries
    assert cells(auto) == cells(fp32)
    notes = [n for s in auto["sections"] for n in s.get("notes", [])]
    assert any("scored in fp32" in n for n in notes)
    assert auto["manifest"]["scoring"]["dtype"].startswith("bfloat16+fp32-fallback")
