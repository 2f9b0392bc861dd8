"""`mergeir task-vector --bits/quantize/--residual/--info`, and quantized τ in merge, registry, sweep."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from mergekit_ir.cli import main
from mergekit_ir.merging.checkpoint import open_checkpoint
from mergekit_ir.merging.engine import MergeJob, build_plan
from mergekit_ir.merging.sweep import InPlaceSweep
from mergekit_ir.merging.task_vector import TaskVector
from mergekit_ir.plugin_host import catalog
from mergekit_ir.scoring.scorer import ScoringSettings

K = "encoder.layer.1.output.dense.weight"
PAIRS = [("cancer tumor", "the tumor cell study"), ("heart risk", "heart patients risk study")]
SETTINGS = ScoringSettings(device="cpu", dtype="fp32", batch_size=2, show_progress=False)


def cli(*args: str) -> str:
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res.output


@pytest.fixture(scope="module")
def q4(tiny_triplet, tmp_path_factory):
    out = tmp_path_factory.mktemp("tvq") / "q4"
    t = tiny_triplet
    text = cli(
        "task-vector", "--pretrained", t["pretrained"], "--domain", t["domain"], "--bits", "4",
        "--group-size", "32", "--keep-full-below", "0", "--out", out,
    )  # fmt: skip
    assert "4-bit" in text
    return out


def test_bits_info_and_quantize_subcommand(tiny_triplet, q4, tmp_path):
    t = tiny_triplet
    text = cli("task-vector", "--info", q4)
    assert "tvq 4-bit, group size 32" in text and "relative error" in text and "bits/value" in text
    full = tmp_path / "fp32"
    cli("task-vector", "--pretrained", t["pretrained"], "--domain", t["domain"], "--out", full)
    assert "full-precision" in cli("task-vector", "--info", full)
    cli("task-vector", "quantize", full, tmp_path / "q4b", "--bits", "4", "--group-size", "32",
        "--keep-full-below", "0")  # fmt: skip
    a = load_file(q4 / "task_vector.safetensors")
    b = load_file(tmp_path / "q4b" / "task_vector.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "q4b").stat().st_size and q4.joinpath("task_vector.json").is_file()
    sizes = [
        p.stat().st_size for p in (full / "task_vector.safetensors", q4 / "task_vector.safetensors")
    ]
    assert sizes[1] < sizes[0] / 3  # tiny model: header and fp16 1-D tensors weigh in


def test_residual_cli(tiny_triplet, tmp_path):
    from mergekit_ir.references.tiny_models import save_bert, word_tokenizer
    from tests.conftest import WORDS

    t = tiny_triplet
    state = load_file(t["pretrained"] / "model.safetensors")
    d2 = save_bert(
        tmp_path / "d2", word_tokenizer(WORDS), 9, head="mlm", base_state=state, noise=0.02
    )
    text = cli(
        "task-vector", "--pretrained", t["pretrained"], "--domain", f"bio={t['domain']}",
        "--domain", f"sci={d2}", "--residual", "--keep-full-below", "0", "--group-size", "32",
        "--out", tmp_path / "r",
    )  # fmt: skip
    assert "base (3-bit) + 2 offsets (2-bit): bio, sci" in text
    assert "rtvq-offset 2-bit" in cli("task-vector", "--info", tmp_path / "r" / "sci")
    v = TaskVector.load(tmp_path / "r" / "bio")
    pre = open_checkpoint(str(t["pretrained"]))
    tau = TaskVector.from_checkpoints(pre, open_checkpoint(str(t["domain"])))
    assert (v.get(K) - tau.get(K)).norm() < 0.3 * tau.get(K).norm()


def test_errors_are_one_line(tiny_triplet, q4, tmp_path):
    res = CliRunner().invoke(main, ["task-vector", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "needs --pretrained, --domain and --out" in res.output
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "task_vector.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{broken")
    res = CliRunner().invoke(main, ["task-vector", "--info", str(bad)])
    assert res.exit_code == 2 and res.output.startswith("error: ") and res.output.count("\n") == 1
    res = CliRunner().invoke(
        main, ["task-vector", "quantize", str(q4), str(tmp_path / "y"), "--bits", "5"]
    )
    assert res.exit_code == 2 and "--bits" in res.output


def test_merge_cli_and_registry_take_a_quantized_vector(tiny_triplet, q4, tmp_path):
    t = tiny_triplet
    cli("merge", "--ir", t["ir"], "--domain", f"task_vector:{q4}", "--alpha", "0.5",
        "--out", tmp_path / "m", "-q")  # fmt: skip
    reg = tmp_path / "registry.yaml"
    reg.write_text(
        f"triplets:\n  tvq:\n    scorer: {{kind: cross-encoder}}\n    ir: {t['ir']}\n"
        f"    domain: {{task_vector: {q4}}}\n"
    )
    cli("merge", "tvq", "--registry", reg, "--alpha", "0.5", "--out", tmp_path / "r", "-q")
    a = load_file(tmp_path / "m" / "model.safetensors")
    b = load_file(tmp_path / "r" / "model.safetensors")
    ir = load_file(t["ir"] / "model.safetensors")
    tau = TaskVector.load(q4).get(K)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(a[f"bert.{K}"], ir[f"bert.{K}"] + 0.5 * tau)


@pytest.mark.slow
def test_inplace_sweep_scores_equal_merge_from_quantized(tiny_triplet, q4, tmp_path):
    cat = catalog()
    kind = cat.scorer("cross-encoder")
    job = MergeJob(
        open_checkpoint(str(tiny_triplet["ir"])),
        [TaskVector.load(q4)],
        cat.merge_method("task_arithmetic"),
        {"alpha": 1.0, "weights": None},
    )
    scorer = kind.load(tiny_triplet["ir"], {}, SETTINGS)
    sweep = InPlaceSweep(scorer.model, job, build_plan(job))
    for alpha in (0.3, 1.0):
        sweep.apply({"alpha": alpha})
        live = scorer.score_pairs(PAIRS)
        out = tmp_path / f"m{alpha}"
        cli("merge", "--ir", tiny_triplet["ir"], "--domain", f"task_vector:{q4}",
            "--alpha", alpha, "--out", out, "-q")  # fmt: skip
        assert live == pytest.approx(kind.load(out, {}, SETTINGS).score_pairs(PAIRS), abs=1e-6)
    sweep.restore()
