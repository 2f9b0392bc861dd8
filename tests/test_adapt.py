"""`adapt` on tiny BERT / T5 / Llama built here: loss falls, resume is bit-identical, LoRA output
is peft's merge_and_unload as a task vector, fresh heads are dropped, bad input is one line."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mergekit_ir.adaptation.build import adapt
from mergekit_ir.adaptation.corpus import pack_blocks
from mergekit_ir.adaptation.training import AdaptSettings, LoraSpec
from mergekit_ir.errors import CheckpointError, ConfigError, DatasetError
from tiny_checkpoints import VOCAB, save_llama, save_t5, save_word_bert

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A toy corpus with structure to learn: a few repeated sentence patterns."""
    rng = random.Random(0)
    patterns = [VOCAB[i : i + 6] for i in range(0, 36, 6)]
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    with path.open("w") as fh:
        for i in range(60):
            words = [w for _ in range(3) for w in rng.choice(patterns)]
            fh.write(json.dumps({"_id": str(i), "title": "", "text": " ".join(words)}) + "\n")
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapt-models")
    t5 = save_t5(root / "t5", extra=tuple(f"<extra_id_{i}>" for i in range(20)))
    return {
        "bert": save_word_bert(root / "bert", 0, head="mlm"),
        "bert_base": save_word_bert(root / "bert_base", 1, head="base"),
        "t5": t5,
        "llama": save_llama(root / "llama"),
    }


def settings(**kw) -> AdaptSettings:
    base = dict(steps=30, max_length=24, batch_size=8, lr=3e-3, warmup=0, head_warmup=5, seed=0)
    base.update(kw)
    return AdaptSettings(**base)


def test_pack_blocks_by_hand():
    blocks = pack_blocks([[1, 2, 3], [4], [5, 6, 7, 8]], 5, prefix=[0], suffix=[9], separator=[7])
    # stream 1 2 3 7 4 7 5 6 7 8 7 -> bodies of 3
    assert blocks == [[0, 1, 2, 3, 9], [0, 7, 4, 7, 9], [0, 5, 6, 7, 9]]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["bert", "t5", "llama"])
def test_loss_decreases_for_each_objective(models, corpus, tmp_path, arch):
    info = adapt(models[arch], str(corpus), tmp_path / "out", settings(), CPU, show_progress=False)
    card = json.loads((tmp_path / "out" / "mergekit_ir_adapt.json").read_text())
    assert card["objective"] == {"bert": "mlm", "t5": "span", "llama": "clm"}[arch]
    curve = card["loss_curve"]
    assert sum(curve[-5:]) / 5 < sum(curve[:5]) / 5 * 0.9, curve
    assert (tmp_path / "out" / "loss.png").is_file() and (tmp_path / "out" / "README.md").is_file()
    assert info["tokens_seen"] > 0
    # ΘD keeps the base's tensor names exactly
    base = load_file(models[arch] / "model.safetensors")
    assert set(load_file(tmp_path / "out" / "model.safetensors")) == set(base)


def test_progress_in_a_log_is_a_line_per_tenth(models, corpus, tmp_path, capsys):
    """stderr is not a TTY under pytest: no bar redraws, at most ten step lines (a short run
    gets no 30-second lines; the phase lines start with ``adapt:``)."""
    adapt(models["bert"], str(corpus), tmp_path / "o", settings(steps=20, max_length=16), CPU)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("adapt step")]
    assert lines and len(lines) <= 10 and "\r" not in "".join(lines), lines
    assert lines[-1].startswith("adapt step 20/20 · loss ")


def test_resume_after_interruption_is_bit_identical(models, corpus, tmp_path):
    s = settings(steps=6, max_length=16)
    adapt(models["bert"], str(corpus), tmp_path / "full", s, CPU, show_progress=False)
    part = adapt(
        models["bert"],
        str(corpus),
        tmp_path / "cut",
        s,
        CPU,
        checkpoint_every=2,
        show_progress=False,
        stop_after=5,
    )
    assert part.get("interrupted") and not (tmp_path / "cut").exists()
    assert (tmp_path / "cut.checkpoint" / "state.pt").is_file()
    adapt(
        models["bert"],
        str(corpus),
        tmp_path / "cut",
        s,
        CPU,
        checkpoint_every=2,
        show_progress=False,
    )
    a = load_file(tmp_path / "full" / "model.safetensors")
    b = load_file(tmp_path / "cut" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "cut.checkpoint").exists()


def test_fresh_head_is_warmed_up_and_dropped(models, corpus, tmp_path):
    s = settings(steps=3, head_warmup=2, max_length=16)
    info = adapt(models["bert_base"], str(corpus), tmp_path / "d", s, CPU, show_progress=False)
    assert info["head_warmup_steps"] == 2 and info["fresh_head"]
    base = load_file(models["bert_base"] / "model.safetensors")
    out = load_file(tmp_path / "d" / "model.safetensors")
    assert set(out) == set(base)  # no cls.* head, pooler kept
    assert not torch.equal(
        out["encoder.layer.0.attention.self.query.weight"],
        base["encoder.layer.0.attention.self.query.weight"],
    )
    assert torch.equal(out["pooler.dense.weight"], base["pooler.dense.weight"])


def test_freeze_head_keeps_the_head(models, corpus, tmp_path):
    s = settings(steps=3, max_length=16, freeze_head=True)
    adapt(models["bert"], str(corpus), tmp_path / "d", s, CPU, show_progress=False)
    base = load_file(models["bert"] / "model.safetensors")
    out = load_file(tmp_path / "d" / "model.safetensors")
    head = [k for k in base if k.startswith("cls.")]
    assert head and all(torch.equal(out[k], base[k]) for k in head)
    assert not torch.equal(
        out["bert.encoder.layer.1.output.dense.weight"],
        base["bert.encoder.layer.1.output.dense.weight"],
    )


def test_lora_adapter_as_task_vector_equals_peft_merge_and_unload(models, corpus, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForMaskedLM

    from mergekit_ir.merging.task_vector import TaskVector

    s = settings(steps=4, max_length=16, lora=LoraSpec(r=4, alpha=8, targets=("query", "value")))
    adapt(models["bert"], str(corpus), tmp_path / "lora", s, CPU, show_progress=False)
    assert (tmp_path / "lora" / "adapter_config.json").is_file()
    tau = TaskVector.from_lora(tmp_path / "lora")
    base = AutoModelForMaskedLM.from_pretrained(models["bert"])
    theta0 = {k: v.clone() for k, v in base.state_dict().items()}
    merged = PeftModel.from_pretrained(base, tmp_path / "lora").merge_and_unload().state_dict()
    keys = tau.keys()
    assert keys and all("query" in k or "value" in k for k in keys)
    full = {k: k if k in theta0 else f"bert.{k}" for k in keys}  # τ names drop the class prefix
    for k, name in full.items():
        assert torch.allclose(theta0[name] + tau.get(k), merged[name], atol=1e-6), k
    changed = [k for k in merged if not torch.equal(merged[k], theta0[k])]
    assert set(changed) == set(full.values())


def test_bad_input_is_one_line_each(models, corpus, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(DatasetError, match="no text"):
        adapt(models["bert"], str(empty), tmp_path / "o", settings(), CPU, show_progress=False)
    small = tmp_path / "small.txt"
    small.write_text("the cell\n")
    with pytest.raises(DatasetError, match="fewer than one block of --max-length 24"):
        adapt(models["bert"], str(small), tmp_path / "o", settings(), CPU, show_progress=False)
    no_tok = tmp_path / "no_tok"
    no_tok.mkdir()
    for f in ("config.json", "model.safetensors"):
        (no_tok / f).write_bytes((models["bert"] / f).read_bytes())
    with pytest.raises(CheckpointError, match="no tokenizer"):
        adapt(no_tok, str(corpus), tmp_path / "o", settings(), CPU, show_progress=False)
    with pytest.raises(ConfigError, match="objective 'span' does not fit a bert"):
        adapt(models["bert"], str(corpus), tmp_path / "o", settings(objective="span"), CPU)
    with pytest.raises(ConfigError, match="LoRA targets nonexistent match no module"):
        s = settings(lora=LoraSpec(targets=("nonexistent",)))
        adapt(models["bert"], str(corpus), tmp_path / "o", s, CPU, show_progress=False)
    assert not (tmp_path / "o").exists()


def test_lora_spec_parses_target_lists():
    spec = LoraSpec.parse("r=8,alpha=16,targets=query,value")
    assert spec == LoraSpec(r=8, alpha=16, targets=("query", "value"))
    assert LoraSpec.parse("r=4").alpha == 8
    with pytest.raises(ConfigError, match="unknown key 'rank'"):
        LoraSpec.parse("rank=4")


def _cli(*args: str):
    from click.testing import CliRunner

    from mergekit_ir.cli import main

    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_cli_adapt_writes_a_checkpoint_and_bad_input_is_one_line(models, corpus, tmp_path):
    common = ["--base", str(models["bert"]), "--max-length", "16", "--batch-size", "4", "-q"]
    res = _cli(
        "adapt",
        *common,
        "--corpus",
        str(corpus),
        "--out",
        str(tmp_path / "d"),
        "--steps",
        "2",
        "--device",
        "cpu",
        "--cache-dir",
        str(tmp_path / "c"),
    )
    assert res.exit_code == 0, res.output
    assert "wrote" in res.output and "mlm, 2 steps" in res.output
    assert list((tmp_path / "c" / "adapt-corpus").glob("*.pt"))  # tokenised corpus cached
    res = _cli(
        "adapt", *common, "--corpus", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "e")
    )
    assert res.exit_code == 2
    assert res.output.strip().count("\n") == 0 and "file not found" in res.output
    res = _cli(
        "adapt",
        *common,
        "--corpus",
        str(corpus),
        "--out",
        str(tmp_path / "e"),
        "--lora",
        "r=4,targets=nothing",
        "--device",
        "cpu",
    )
    assert res.exit_code == 2 and "match no module" in res.output


@pytest.mark.slow
def test_kill_9_then_rerun_resumes_to_the_same_weights(models, corpus, tmp_path):
    """The real thing: SIGKILL `mergeir adapt` once a checkpoint exists, rerun the command,
    and compare every tensor with an uninterrupted run (same threads, CPU)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    def command(out: Path) -> list[str]:
        return [
            sys.executable, "-m", "mergekit_ir.cli", "adapt", "--base", str(models["bert"]),
            "--corpus", str(corpus), "--out", str(out), "--steps", "100", "--max-length", "16",
            "--batch-size", "4", "--lr", "3e-3", "--warmup", "0", "--checkpoint-every", "20",
            "--device", "cpu",
        ]  # fmt: skip

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cut = tmp_path / "cut"
    proc = subprocess.Popen(command(cut), env=env, stderr=subprocess.PIPE, text=True)
    state = tmp_path / "cut.checkpoint" / "state.pt"
    deadline = time.monotonic() + 120
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and state.exists() and not cut.exists()
    resumed = subprocess.run(command(cut), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    full = subprocess.run(command(tmp_path / "full"), env=env, capture_output=True, text=True)
    assert full.returncode == 0, full.stderr
    a = load_file(tmp_path / "full" / "model.safetensors")
    b = load_file(cut / "model.safetensors")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    card = json.loads((cut / "mergekit_ir_adapt.json").read_text())
    assert card["steps"] == 100


def test_masked_lm_loss_on_masked_rows_equals_the_models_loss(models):
    """The head on the masked positions only gives transformers' own MLM loss, also through a
    LoRA wrapper."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForMaskedLM

    from mergekit_ir.adaptation.training import masked_lm_loss

    model = AutoModelForMaskedLM.from_pretrained(models["bert"]).eval()
    torch.manual_seed(0)
    ids = torch.randint(5, 40, (3, 12))
    labels = torch.full_like(ids, -100)
    labels[:, ::4] = ids[:, ::4]
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    with torch.no_grad():
        torch.testing.assert_close(masked_lm_loss(model, batch), model(**batch).loss)
        lora = get_peft_model(model, LoraConfig(r=4, target_modules=["query", "value"])).eval()
        torch.testing.assert_close(masked_lm_loss(lora, batch), lora(**batch).loss)
        nothing = {**batch, "labels": torch.full_like(ids, -100)}
        assert masked_lm_loss(model, nothing).item() == 0.0
