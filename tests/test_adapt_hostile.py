"""`mergeir adapt` against hostile input: every case here lost data, wrote a wrong model, threw
work away, printed a traceback or stayed silent before it was fixed.

Tiny BERTs built here; "before any work" is asserted by making tokenising and training fail
the test if they are reached. Time is a fake clock (no sleeps): progress and checkpoints by
time are tested by making each training step take ten fake seconds.
"""

from __future__ import annotations

import json
import os
import random
import stat
import sys
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from mergekit_ir.adaptation import build, progress, training
from mergekit_ir.adaptation.build import adapt
from mergekit_ir.adaptation.training import AdaptSettings, DivergedError
from mergekit_ir.errors import CheckpointError, ConfigError, DatasetError, MergeIRError
from tiny_checkpoints import VOCAB, save_word_bert

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hostile")


@pytest.fixture(scope="module")
def corpus(root) -> Path:
    rng = random.Random(0)
    path = root / "docs.jsonl"
    with path.open("w") as fh:
        for i in range(40):
            text = " ".join(rng.choice(VOCAB) for _ in range(18))
            fh.write(json.dumps({"_id": str(i), "text": text}) + "\n")
    return path


@pytest.fixture(scope="module")
def bert(root) -> Path:
    return save_word_bert(root / "bert", 0, head="mlm")


@pytest.fixture(scope="module")
def headless(root) -> Path:
    """A BERT without an MLM head (a sentence-transformers style BertModel)."""
    return save_word_bert(root / "bert_base", 1, head="base")


@pytest.fixture(scope="module")
def built(bert, corpus, root) -> tuple[Path, AdaptSettings]:
    """One finished ΘD (and the settings that built it)."""
    s = settings()
    adapt(bert, str(corpus), root / "built", s, CPU, show_progress=False)
    return root / "built", s


def settings(**kw) -> AdaptSettings:
    base = dict(steps=2, max_length=16, batch_size=4, lr=3e-3, warmup=0, head_warmup=2, seed=0)
    base.update(kw)
    return AdaptSettings(**base)


@pytest.fixture
def no_work(monkeypatch):
    """Tokenising or training reached: the check came too late."""

    def fail(*_a, **_k):
        raise AssertionError("the work started before the refusal")

    monkeypatch.setattr(build, "packed_blocks", fail)
    monkeypatch.setattr(build, "train", fail)


def cli(*args: str, **kw):
    from mergekit_ir.cli import main

    return CliRunner().invoke(main, ["adapt", *args], catch_exceptions=False, **kw)


def one_line(res, pattern: str) -> str:
    import re

    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


# -- 1. data loss ---------------------------------------------------------------------------------


def test_overwrite_never_deletes_a_users_folder(bert, corpus, tmp_path, no_work):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("two years of work")
    with pytest.raises(
        MergeIRError, match=r"not an earlier `mergeir adapt` output .*mergekit_ir_adapt\.json"
    ):
        adapt(bert, str(corpus), out, settings(), CPU, overwrite=True, show_progress=False)
    assert (out / "thesis.tex").read_text() == "two years of work"


def test_overwrite_never_deletes_what_a_symlinked_out_points_to(bert, corpus, tmp_path, no_work):
    target = tmp_path / "data"
    target.mkdir()
    (target / "results.csv").write_text("1,2,3")
    link = tmp_path / "theta-d"
    link.symlink_to(target)
    with pytest.raises(MergeIRError, match="will not replace it"):
        adapt(bert, str(corpus), link, settings(), CPU, overwrite=True, show_progress=False)
    assert (target / "results.csv").read_text() == "1,2,3" and link.is_symlink()


@pytest.mark.parametrize("where", ["base", "inside", "above"])
def test_out_is_never_the_base_inside_it_or_above_it(bert, corpus, root, where, no_work):
    out = {"base": bert, "inside": bert / "theta-d", "above": root}[where]
    message = {"base": "is the input folder of --base", "inside": "is inside the input folder",
               "above": "contains the input folder"}[where]  # fmt: skip
    before = sorted(p.name for p in bert.iterdir())
    with pytest.raises(MergeIRError, match=message):
        adapt(bert, str(corpus), out, settings(), CPU, overwrite=True, show_progress=False)
    assert sorted(p.name for p in bert.iterdir()) == before


def test_out_is_never_the_corpus_or_its_folder(bert, tmp_path, no_work):
    beir = tmp_path / "beir"
    beir.mkdir()
    (beir / "corpus.jsonl").write_text(json.dumps({"text": "the cell"}) + "\n")
    for out in (beir, tmp_path):
        with pytest.raises(MergeIRError, match="--corpus"):
            adapt(bert, str(beir), out, settings(), CPU, overwrite=True, show_progress=False)
    assert (beir / "corpus.jsonl").is_file()


def test_cli_out_equal_to_base_is_one_line(bert, corpus, no_work):
    res = cli("--base", str(bert), "--corpus", str(corpus), "--out", str(bert), "--overwrite")
    one_line(res, r"--out .*: is the input folder of --base")


def test_a_users_folder_named_like_the_checkpoint_is_not_taken(bert, corpus, tmp_path, no_work):
    """``<out>.checkpoint`` is removed when ΘD is written: a user's folder of that name is
    refused before any work, not filled and deleted."""
    mine = tmp_path / "d.checkpoint"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(ConfigError, match="not a checkpoint of `mergeir adapt`"):
        adapt(bert, str(corpus), tmp_path / "d", settings(), CPU, show_progress=False)
    assert (mine / "notes.txt").read_text() == "keep"


# -- 2. silent wrong models -----------------------------------------------------------------------


def _nan_from_step(monkeypatch, first_bad: int) -> None:
    """A diverging run: the loss turns NaN at step ``first_bad`` (1-based)."""
    calls = {"n": 0}
    real = training.masked_lm_loss

    def loss(model, batch):
        calls["n"] += 1
        value = real(model, batch)
        return value * float("nan") if calls["n"] >= first_bad else value

    monkeypatch.setattr(training, "masked_lm_loss", loss)


def test_a_nan_loss_stops_at_its_step_and_writes_nothing(bert, corpus, tmp_path, monkeypatch):
    _nan_from_step(monkeypatch, 3)
    out = tmp_path / "d"
    with pytest.raises(DivergedError, match=r"loss is nan at step 3/6.*lower --lr \(now 0\.003\)"):
        adapt(
            bert, str(corpus), out, settings(steps=6), CPU, checkpoint_every=1, show_progress=False
        )
    assert not out.exists()
    assert not (tmp_path / "d.checkpoint").exists()  # a diverging run's checkpoints go too


def test_a_nan_loss_before_any_update_blames_the_base_not_the_lr(
    bert, corpus, tmp_path, monkeypatch
):
    _nan_from_step(monkeypatch, 1)
    with pytest.raises(
        DivergedError, match="on the first batch, before any update: the base itself"
    ):
        adapt(bert, str(corpus), tmp_path / "d", settings(), CPU, show_progress=False)


def test_cli_divergence_is_one_line(bert, corpus, tmp_path, monkeypatch):
    _nan_from_step(monkeypatch, 2)
    res = cli("--base", str(bert), "--corpus", str(corpus), "--out", str(tmp_path / "d"),
              "--steps", "4", "--max-length", "16", "--batch-size", "4", "--lr", "5",
              "--device", "cpu", "-q")  # fmt: skip
    one_line(res, r"loss is nan at step 2/4: training diverged; lower --lr \(now 5\)")
    assert not (tmp_path / "d").exists()


def test_non_finite_weights_are_never_written(bert, tmp_path):
    from transformers import AutoModelForMaskedLM

    from mergekit_ir.adaptation.output import write_output

    model = AutoModelForMaskedLM.from_pretrained(bert)
    with torch.no_grad():
        model.bert.encoder.layer[0].output.dense.weight[0, 0] = float("inf")
    result = training.TrainResult(model, "mlm", 1, 0, 10, [1.0], [], 0.1)
    info = {
        k: "x"
        for k in (
            "base",
            "base_fingerprint",
            "corpus",
            "corpus_fingerprint",
            "objective",
            "steps",
            "head_warmup_steps",
            "seed",
            "tokens_seen",
        )
    }
    info["settings"] = {}  # fmt: skip
    with pytest.raises(
        CheckpointError, match=r"encoder\.layer\.0\.output\.dense\.weight holds NaN/inf"
    ):
        write_output(tmp_path / "d", bert, result, info, False)
    assert not (tmp_path / "d").exists()


def test_a_base_with_only_pytorch_model_bin_is_converted(bert, corpus, tmp_path, built):
    """Decision: convert. The .bin is read with torch.load(weights_only=True) and ΘD is
    written as model.safetensors under the .bin's tensor names — the same weights a
    safetensors base of the same content gives (it used to be an empty model.safetensors)."""
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    for f in bert.iterdir():
        if f.suffix != ".safetensors":
            (legacy / f.name).write_bytes(f.read_bytes())
    torch.save(load_file(bert / "model.safetensors"), legacy / "pytorch_model.bin")
    out, s = built
    adapt(legacy, str(corpus), tmp_path / "d", s, CPU, show_progress=False)
    got = load_file(tmp_path / "d" / "model.safetensors")
    want = load_file(out / "model.safetensors")
    assert set(got) == set(want) and len(got) > 10
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert not (tmp_path / "d" / "pytorch_model.bin").exists()


def test_a_base_without_pytorch_weights_is_one_line_before_work(bert, corpus, tmp_path, no_work):
    tf = tmp_path / "tf"
    tf.mkdir()
    for f in bert.iterdir():
        if f.suffix != ".safetensors":
            (tf / f.name).write_bytes(f.read_bytes())
    (tf / "tf_model.h5").write_bytes(b"\x89HDF")
    with pytest.raises(
        CheckpointError, match=r"no PyTorch weights \(\*\.safetensors or pytorch_model\.bin\)"
    ):
        adapt(tf, str(corpus), tmp_path / "d", settings(), CPU, show_progress=False)


def test_an_exploding_but_finite_loss_is_a_warning(bert, corpus, tmp_path, capsys):
    adapt(bert, str(corpus), tmp_path / "d", settings(steps=12, lr=5.0), CPU, show_progress=False)
    err = capsys.readouterr().err
    assert "warning: the loss rose from" in err and "lower --lr (now 5)" in err


# -- 3. work thrown away --------------------------------------------------------------------------


def test_an_existing_output_without_overwrite_is_refused_before_work(bert, corpus, built, no_work):
    out, s = built
    with pytest.raises(MergeIRError, match="output folder exists; pass --overwrite"):
        adapt(bert, str(corpus), out, settings(steps=3), CPU, show_progress=False)


def test_a_read_only_output_folder_is_refused_before_work(
    bert, corpus, tmp_path, monkeypatch, no_work
):
    real = os.statvfs

    class ReadOnly:
        def __init__(self, st):
            self.st = st

        def __getattr__(self, name):
            return os.ST_RDONLY | self.st.f_flag if name == "f_flag" else getattr(self.st, name)

    monkeypatch.setattr(os, "statvfs", lambda p: ReadOnly(real(p)))
    with pytest.raises(MergeIRError, match="read-only file system; choose another folder"):
        adapt(bert, str(corpus), tmp_path / "d", settings(), CPU, show_progress=False)


def test_a_full_disk_is_refused_before_work(bert, corpus, tmp_path, monkeypatch, no_work):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 10**6, 10**6))
    with pytest.raises(MergeIRError, match=r"--out .*: needs about .* MB but .* has 1\.0 MB free"):
        adapt(bert, str(corpus), tmp_path / "d", settings(), CPU, show_progress=False)


def test_the_space_needed_counts_the_model_and_its_checkpoints(bert, tmp_path):
    from mergekit_ir.adaptation.output import base_numel

    fp32 = base_numel(bert) * 4
    ck = tmp_path / "none"
    assert build.needed_bytes(bert, settings(), False, ck) == fp32
    assert build.needed_bytes(bert, settings(), True, ck) == fp32 + 2 * 3 * fp32
    lora = settings(lora=training.LoraSpec(r=2))
    assert build.needed_bytes(bert, lora, True, ck) == 2 * fp32


def test_rerunning_the_finished_command_is_done_not_an_error(bert, corpus, tmp_path, monkeypatch):
    args = ("--base", str(bert), "--corpus", str(corpus), "--out", str(tmp_path / "d"),
            "--steps", "2", "--max-length", "16", "--batch-size", "4", "--device", "cpu", "-q",
            "--cache-dir", str(tmp_path / "c"))  # fmt: skip
    first = cli(*args)
    assert first.exit_code == 0 and "wrote" in first.output, first.output
    card = (tmp_path / "d" / "mergekit_ir_adapt.json").read_text()
    monkeypatch.setattr(build, "train", lambda *a, **k: pytest.fail("trained again"))
    again = cli(*args)
    assert again.exit_code == 0, again.output
    assert "already built" in again.output and "nothing to do" in again.output
    assert (tmp_path / "d" / "mergekit_ir_adapt.json").read_text() == card


# -- 4. tracebacks for user errors ----------------------------------------------------------------


def test_max_length_beyond_the_positions_is_one_line_before_work(bert, corpus, tmp_path, no_work):
    res = cli("--base", str(bert), "--corpus", str(corpus), "--out", str(tmp_path / "d"),
              "--max-length", "300", "--steps", "2", "--device", "cpu")  # fmt: skip
    one_line(
        res,
        r"--max-length 300: more tokens than .* has positions for \(128, from max_position_embeddings",
    )


def test_position_limit_of_roberta_style_embeddings():
    from transformers import BertConfig, RobertaConfig, T5Config

    assert build.position_limit(BertConfig()) == 512
    assert build.position_limit(RobertaConfig(max_position_embeddings=514, pad_token_id=1)) == 512
    assert build.position_limit(T5Config()) is None  # relative positions: no absolute limit


def test_head_warmup_beyond_steps_is_capped_and_said(headless, corpus, tmp_path, capsys):
    """Decision: cap. The default --head-warmup 100 on a 2-step run would train the fresh head
    50× longer than the model; it warms up for --steps steps instead, with a warning line."""
    s = settings(steps=2, head_warmup=100)
    info = adapt(headless, str(corpus), tmp_path / "d", s, CPU, show_progress=False)
    assert info["head_warmup_steps"] == 2 and info["steps"] == 2
    err = capsys.readouterr().err
    assert "--head-warmup 100 capped at the 2 training steps" in err


def test_freeze_head_without_a_head_is_one_line(headless, corpus, tmp_path):
    with pytest.raises(
        ConfigError, match=r"--freeze-head: .* has no MLM head .*drop --freeze-head"
    ):
        adapt(headless, str(corpus), tmp_path / "d", settings(freeze_head=True), CPU,
              show_progress=False)  # fmt: skip
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("latin1.txt", "the cell\ngene\nprotéine cancer\n".encode("latin-1"),
         r"latin1\.txt:3: not UTF-8 text \(byte 0xe9 at column 5\)"),
        ("docs.jsonl", b'{"text": "the cell"}\n{"text": "\xff\xfe"}\n',
         r"docs\.jsonl:2: not UTF-8 text \(byte 0xff"),
        ("model.bin", b"PK\x03\x04\x00\x00binary\n", r"model\.bin:1: a NUL byte: a binary file"),
    ],
)  # fmt: skip
def test_binary_or_non_utf8_corpus_is_one_line_with_file_and_line(
    bert, tmp_path, name, data, message, no_work
):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(DatasetError, match=message):
        adapt(bert, str(path), tmp_path / "d", settings(), CPU, show_progress=False)


@pytest.mark.parametrize(
    "text",
    ["zebra xylophone quartz", "\u200b \u200b", "… — …"],
    ids=["unknown", "zero-width", "symbols"],
)
def test_a_corpus_the_tokenizer_knows_nothing_of_is_one_line(bert, tmp_path, text):
    """Texts that tokenise to nothing or to [UNK] only used to train 'successfully' on
    separators (loss 0.000) and write an unchanged-but-labelled ΘD."""
    path = tmp_path / "c.txt"
    path.write_text("\n".join([text] * 200))
    with pytest.raises(DatasetError, match="tokenise to nothing the base's tokenizer knows"):
        adapt(bert, str(path), tmp_path / "d", settings(), CPU, show_progress=False)
    assert not (tmp_path / "d").exists()


def test_empty_texts_only_is_one_line(bert, tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_text("\n".join(json.dumps({"title": "", "text": t}) for t in ["", " ", "\t"]))
    with pytest.raises(DatasetError, match="no text"):
        adapt(bert, str(path), tmp_path / "d", settings(), CPU, show_progress=False)


# -- 5. registry paths, file modes, symlinks ------------------------------------------------------


def _registry(tmp_path: Path, base: Path, adapt_block: dict) -> Path:
    raw = {
        "datasets": {"toy": {"beir": "quickstart:toy", "test": "test"}},
        "triplets": {
            "t": {
                "scorer": {"kind": "bi-encoder", "pooling": "mean", "similarity": "cosine"},
                "pretrained": str(base),
                "ir": str(base),
                "domain": {"adapt": adapt_block},
            }
        },
        "experiments": {
            "e": {
                "triplets": ["t"],
                "datasets": ["toy"],
                "merge": {"method": "task_arithmetic", "alpha": [1.0]},
                "first_stage": {"backend": "bm25s", "k": 5},
            }
        },
    }
    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))
    return path


def _spec(tmp_path: Path, base: Path, **block):
    from mergekit_ir.experiments.registry import load_registry

    return load_registry(_registry(tmp_path, base, block)).triplet("t").domains[0].adapt


def test_registry_max_length_is_checked_when_planned_and_names_the_yaml_path(
    bert, corpus, tmp_path
):
    from mergekit_ir.adaptation.domain import plan_domain

    spec = _spec(tmp_path, bert, corpus=str(corpus), steps=2, max_length=300)
    with pytest.raises(
        ConfigError, match=r"^triplets\.t\.domain\.adapt\.max_length: 300: more tokens"
    ):
        plan_domain(spec, bert, None, tmp_path / "cache")


@pytest.mark.parametrize(
    "block, nan, message",
    [
        ({"max_length": 64}, False,
         r"fewer than one block of triplets\.t\.domain\.adapt\.max_length: 64; lower triplets\.t\.domain\.adapt\.max_length"),
        ({"max_length": 16}, True, r"lower triplets\.t\.domain\.adapt\.lr \(now 0\.003\)"),
        ({"max_length": 16, "objective": "clm"}, False, r"use triplets\.t\.domain\.adapt\.objective auto"),
        ({"max_length": 16, "corpus": "missing.jsonl"}, False,
         r"triplets\.t\.domain\.adapt\.corpus: missing\.jsonl: file not found"),
    ],
)  # fmt: skip
def test_registry_build_errors_name_the_yaml_path_not_a_flag(
    bert, tmp_path, monkeypatch, block, nan, message
):
    from mergekit_ir.adaptation.domain import build_domain

    small = tmp_path / "small.txt"
    small.write_text("the cell gene protein\n" * 12)  # 60 tokens: 3 blocks of 16, none of 64
    if nan:
        _nan_from_step(monkeypatch, 2)
    block = {"corpus": str(small), "steps": 2, "batch_size": 2, "lr": 3e-3, **block}
    spec = _spec(tmp_path, bert, **block)
    with pytest.raises(MergeIRError, match=message) as exc:
        build_domain(
            spec, bert, None, tmp_path / "cache", CPU, echo=lambda *_: None, progress=False
        )
    assert "--" not in str(exc.value).replace("—", "")


@pytest.mark.parametrize("lora", [False, True], ids=["checkpoint", "lora"])
def test_every_output_file_follows_the_umask(bert, corpus, tmp_path, lora):
    """model.safetensors (and peft's adapter) used to be 0600 beside 0644 files."""
    s = settings(lora=training.LoraSpec(r=2, targets=("query",)) if lora else None)
    old = os.umask(0o002)
    try:
        adapt(bert, str(corpus), tmp_path / "d", s, CPU, show_progress=False)
    finally:
        os.umask(old)
    folder = tmp_path / "d"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o775
    for f in folder.rglob("*"):
        want = 0o775 if f.is_dir() else 0o664
        assert stat.S_IMODE(f.stat().st_mode) == want, (f.name, oct(f.stat().st_mode))
    weights = "adapter_model.safetensors" if lora else "model.safetensors"
    assert (folder / weights).is_file()


def test_links_out_of_the_base_and_special_files_are_not_copied(bert, corpus, tmp_path, capsys):
    secret = tmp_path / "secret.txt"
    secret.write_text("password")
    base = tmp_path / "base"
    base.mkdir()
    for f in bert.iterdir():
        (base / f.name).write_bytes(f.read_bytes())
    (base / "leak.txt").symlink_to(secret)
    (base / "hostname").symlink_to("/etc/hostname")
    (base / "pooling").mkdir()
    (base / "pooling" / "config.json").write_text("{}")
    (base / "pooling" / "leak.json").symlink_to(secret)
    (base / "etc").symlink_to("/etc")
    (base / "alias.json").symlink_to(base / "config.json")  # inside the base: copied
    os.mkfifo(base / "pipe")
    adapt(base, str(corpus), tmp_path / "d", settings(), CPU, show_progress=False)
    out = tmp_path / "d"
    names = {p.relative_to(out).as_posix() for p in out.rglob("*")}
    assert {"pooling/config.json", "alias.json", "config.json"} <= names
    assert not names & {"leak.txt", "hostname", "pooling/leak.json", "etc", "pipe"}
    assert not any(p.is_symlink() for p in out.rglob("*"))
    assert "password" not in "".join(
        p.read_text(errors="ignore") for p in out.rglob("*") if p.is_file()
    )
    err = capsys.readouterr().err
    assert err.count("links outside the base") == 4 and "pipe is not a regular file" in err


def test_a_hub_snapshot_base_is_copied_through_its_blob_links(bert, tmp_path):
    """Hub snapshots are folders of links into ``../../blobs``: those are the base's own files."""
    from mergekit_ir.adaptation.output import copy_extras

    repo = tmp_path / "models--org--m"
    snap = repo / "snapshots" / "abc"
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for i, f in enumerate(sorted(bert.iterdir())):
        (repo / "blobs" / f"b{i}").write_bytes(f.read_bytes())
        (snap / f.name).symlink_to(Path("../../blobs") / f"b{i}")
    dest = tmp_path / "dest"
    dest.mkdir()
    copy_extras(snap, dest, lambda m: pytest.fail(m), lambda p: p.suffix == ".safetensors")
    assert (dest / "config.json").read_bytes() == (bert / "config.json").read_bytes()
    assert not (dest / "model.safetensors").exists() and not (dest / "config.json").is_symlink()


# -- 6. long work speaks --------------------------------------------------------------------------


class FakeClock:
    """Fake monotonic time: each training step (one loss) takes ``per_step`` seconds."""

    def __init__(self, monkeypatch, per_step: float) -> None:
        self.t = 1000.0
        monkeypatch.setattr(progress, "_clock", lambda: self.t)
        real = training.masked_lm_loss

        def slow_loss(model, batch):
            self.t += per_step
            return real(model, batch)

        monkeypatch.setattr(training, "masked_lm_loss", slow_loss)


def test_first_lines_come_before_tokenising_and_training(
    headless, corpus, tmp_path, monkeypatch, capsys
):
    seen = {}
    real_pack, real_train = build.packed_blocks, build.train

    def pack(*a, **k):
        seen["before tokenising"] = capsys.readouterr().err
        return real_pack(*a, **k)

    def train(*a, **k):
        seen["before training"] = capsys.readouterr().err
        return real_train(*a, **k)

    monkeypatch.setattr(build, "packed_blocks", pack)
    monkeypatch.setattr(build, "train", train)
    adapt(headless, str(corpus), tmp_path / "d", settings(head_warmup=1), CPU)
    assert seen["before tokenising"].startswith("adapt: checking ")
    assert "adapt: tokenising 40 documents" in seen["before training"]
    rest = capsys.readouterr().err
    training_line = rest.index(
        "adapt: training 1 head warm-up (only the fresh head trains) + 2 steps"
    )
    assert training_line < rest.index("adapt step ")


def test_a_log_gets_a_line_at_least_every_30_s_with_rate_and_eta(
    bert, corpus, tmp_path, monkeypatch, capsys
):
    """40 steps of 10 fake seconds: a tenth of the run is 40 s, so the 30 s rule adds lines."""
    FakeClock(monkeypatch, per_step=10.0)
    adapt(bert, str(corpus), tmp_path / "d", settings(steps=40), CPU, checkpoint_minutes=0)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("adapt step")]
    steps = [int(ln.split()[2].split("/")[0]) for ln in lines]
    assert steps[0] <= 3 and steps[-1] == 40
    assert all(b - a <= 3 for a, b in zip(steps, steps[1:], strict=False)), steps
    assert all("steps/s · ETA " in ln for ln in lines)
    at20 = next(ln for ln in lines if ln.startswith("adapt step 20/40"))
    assert "0.10 steps/s · ETA 3m20s" in at20, at20


def test_checkpoints_are_saved_by_time_as_well_as_by_steps(bert, corpus, tmp_path, monkeypatch):
    """--checkpoint-every 0 and one minute of 10-second steps: a checkpoint at step 6, so an
    interruption at step 8 loses two steps, not all eight."""
    FakeClock(monkeypatch, per_step=10.0)
    part = adapt(bert, str(corpus), tmp_path / "d", settings(steps=20), CPU,
                 checkpoint_every=0, checkpoint_minutes=1, stop_after=8, show_progress=False)  # fmt: skip
    assert part["interrupted"]
    info = training.read_checkpoint_info(tmp_path / "d.checkpoint")
    assert info is not None and info["step"] == 6
    state = torch.load(tmp_path / "d.checkpoint" / "state.pt", weights_only=False)
    assert state["step"] == 6 and state["run_key"] == info["run_key"]


def test_checkpoint_minutes_flag_is_checked(bert, corpus, tmp_path):
    res = cli("--base", str(bert), "--corpus", str(corpus), "--out", str(tmp_path / "d"),
              "--checkpoint-minutes", "nan")  # fmt: skip
    one_line(res, r"--checkpoint-minutes: nan is not a finite number")


@pytest.mark.slow
def test_a_real_run_speaks_within_seconds_and_keeps_a_log_readable(bert, corpus, tmp_path):
    """The real command in a subprocess, stderr a pipe (a log): the first line arrives within
    a few seconds of the start (it takes ~2 s here, Python and torch imports included), then
    the tokenising, loading and training lines, with no bar redraws."""
    import subprocess
    import time

    cmd = [sys.executable, "-m", "mergekit_ir.cli", "adapt", "--base", str(bert), "--corpus",
           str(corpus), "--out", str(tmp_path / "d"), "--steps", "20", "--max-length", "16",
           "--batch-size", "4", "--device", "cpu", "--cache-dir", str(tmp_path / "c")]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # the same imports alone, timed now: on a loaded machine they take several times the ~2 s
    # of a quiet one, and the bound is about what the command does after them, not the load
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", "import mergekit_ir.cli, torch"], env=env, check=True)
    bound = max(8.0, 3 * (time.monotonic() - started))
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    first = proc.stderr.readline()
    first_at = time.monotonic() - start
    _, rest = proc.communicate(timeout=300)
    log = first + rest
    assert proc.returncode == 0, log
    assert first.startswith("adapt: checking "), first
    assert first_at < bound, f"first line after {first_at:.1f}s (imports alone: {bound / 3:.1f}s)"
    assert "\r" not in log
    order = ["adapt: tokenising", "adapt: loading", "adapt: training", "adapt step 20/20"]
    assert [log.index(x) for x in order] == sorted(log.index(x) for x in order), log
