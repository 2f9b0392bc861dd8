"""Broken or hostile checkpoints: non-finite ΘT, overflow on the cast back, bad files."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from mergekit_ir.errors import CheckpointError
from mergekit_ir.merging.checkpoint import open_checkpoint
from mergekit_ir.merging.engine import MergeJob, merge_to_folder
from mergekit_ir.merging.task_vector import TaskVector
from mergekit_ir.plugin_host import catalog
from mergekit_ir.storage.fingerprint import file_digest, folder_fingerprint

Q = "bert.encoder.layer.0.attention.self.query.weight"


def rewrite(src, dst, change) -> None:
    shutil.copytree(src, dst)
    sd = load_file(dst / "model.safetensors")
    change(sd)
    save_file(sd, dst / "model.safetensors", metadata={"format": "pt"})


def job(ir, pre, dom, alpha=0.5, **kw) -> MergeJob:
    p = open_checkpoint(str(pre))
    tv = TaskVector.from_checkpoints(p, open_checkpoint(str(dom)))
    method = catalog().merge_method("task_arithmetic")
    return MergeJob(open_checkpoint(str(ir)), [tv], method, {"alpha": alpha}, pretrained=p, **kw)


def test_nan_in_ir_refused(tiny_triplet, tmp_path):
    t = tiny_triplet

    def poison(sd):
        sd[Q][1, 2] = float("nan")

    rewrite(t["ir"], tmp_path / "ir", poison)
    with pytest.raises(CheckpointError, match=rf"tensor {Q}: ΘT \(.*\) has NaN/Inf values"):
        merge_to_folder(job(tmp_path / "ir", t["pretrained"], t["domain"]), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    merge_to_folder(
        job(tmp_path / "ir", t["pretrained"], t["domain"], allow_nonfinite=True),
        tmp_path / "out",
        progress=False,
    )
    assert torch.isnan(load_file(tmp_path / "out" / "model.safetensors")[Q]).any()


def test_fp16_overflow_on_cast_back(tiny_triplet, tmp_path):
    """Finite fp16 ΘT plus a large finite τ: fp32 arithmetic is fine, fp16 output would be Inf."""
    t = tiny_triplet

    def to_fp16(sd):
        for k in list(sd):
            if sd[k].is_floating_point():
                sd[k] = sd[k].half()

    def big(sd):
        sd[Q] = sd[Q] + 50000.0

    rewrite(t["ir"], tmp_path / "ir16", to_fp16)
    rewrite(t["domain"], tmp_path / "dom", big)
    with pytest.raises(
        CheckpointError, match=rf"tensor {Q}: the merged value cast to ΘT's float16 .* overflows"
    ):
        merge_to_folder(
            job(tmp_path / "ir16", t["pretrained"], tmp_path / "dom", alpha=2.0),
            tmp_path / "out",
            progress=False,
        )
    assert not (tmp_path / "out").exists()
    # the same τ at α = 1 stays inside fp16's range (max 65504) and merges
    merge_to_folder(
        job(tmp_path / "ir16", t["pretrained"], tmp_path / "dom", alpha=1.0),
        tmp_path / "out",
        progress=False,
    )
    assert torch.isfinite(load_file(tmp_path / "out" / "model.safetensors")[Q]).all()


def test_fp32_overflow(tiny_triplet, tmp_path):
    t = tiny_triplet

    def huge(sd):
        sd[Q] = sd[Q] + 3e38

    rewrite(t["domain"], tmp_path / "dom", huge)
    with pytest.raises(CheckpointError, match=rf"tensor {Q}: the merged value .* NaN/Inf"):
        merge_to_folder(
            job(t["ir"], t["pretrained"], tmp_path / "dom", alpha=2.0),
            tmp_path / "out",
            progress=False,
        )


# -- content-addressed fingerprints ------------------------------------------------------------
def copy_keeping_stat(src, dst, change=None):
    """A copy whose weights may differ but whose files keep size and mtime (as cp -p does)."""
    shutil.copytree(src, dst)
    f = dst / "model.safetensors"
    st = (src / "model.safetensors").stat()
    if change is not None:
        sd = load_file(f)
        change(sd)
        save_file(sd, f, metadata={"format": "pt"})
        assert f.stat().st_size == st.st_size
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_zeroed_copy_with_same_size_and_mtime_gets_a_new_fingerprint(tiny_triplet, tmp_path):
    cache = tmp_path / "fp"
    src = tiny_triplet["domain"]

    def zero(sd):
        for t in sd.values():
            t.zero_()

    copy_keeping_stat(src, tmp_path / "zeroed", zero)
    copy_keeping_stat(src, tmp_path / "same")
    fp = open_checkpoint(str(src)).fingerprint(cache)
    assert open_checkpoint(str(tmp_path / "zeroed")).fingerprint(cache) != fp
    assert open_checkpoint(str(tmp_path / "same")).fingerprint(cache) == fp  # shared by content


def test_digest_cache_is_used_and_keyed_by_ctime(tmp_path):
    cache = tmp_path / "fp"
    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 1000)
    real = file_digest(f, cache)
    (entry,) = cache.glob("*.json")
    data = json.loads(entry.read_text())
    entry.write_text(json.dumps({**data, "digest": "f" * 64}))
    assert file_digest(f, cache) == "f" * 64  # the remembered digest is reused, not re-read
    st = f.stat()
    f.write_bytes(b"b" * 1000)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # size and mtime set back; ctime moved
    assert file_digest(f, cache) == hashlib.blake2b(b"b" * 1000, digest_size=32).hexdigest()
    assert real == hashlib.blake2b(b"a" * 1000, digest_size=32).hexdigest()


@pytest.mark.parametrize("damage", ["wrong-shape", "folder", "garbage"])
def test_broken_digest_cache_entry_is_recomputed(tmp_path, damage):
    cache = tmp_path / "fp"
    f = tmp_path / "w.bin"
    f.write_bytes(b"x" * 10)
    digest = file_digest(f, cache)
    (entry,) = cache.glob("*.json")
    entry.unlink()
    if damage == "folder":
        entry.mkdir()
    else:
        entry.write_text("[1, 2]" if damage == "wrong-shape" else "\x00{")
    assert file_digest(f, cache) == digest
    assert json.loads(entry.read_text())["digest"] == digest  # replaced


def test_adapter_folders_are_content_addressed(tmp_path):
    a = tmp_path / "a"
    a.mkdir()
    (a / "adapter_config.json").write_text("{}")
    (a / "adapter_model.safetensors").write_bytes(b"1234")
    shutil.copytree(a, tmp_path / "b")
    cache = tmp_path / "fp"
    assert folder_fingerprint(a, "lora", cache) == folder_fingerprint(tmp_path / "b", "lora", cache)
    (tmp_path / "b" / "adapter_model.safetensors").write_bytes(b"1235")
    assert folder_fingerprint(a, "lora", cache) != folder_fingerprint(tmp_path / "b", "lora", cache)
    assert folder_fingerprint(a, "lora", cache) != folder_fingerprint(a, "task_vector", cache)


# -- cross-encoder on a folder without a classification head ------------------------------------
def load_cross_encoder(folder, strict=False):
    from mergekit_ir.params import check_params
    from mergekit_ir.scoring.scorer import ScoringSettings

    kind = catalog().scorer("cross-encoder")
    options = check_params(kind.params, {}, "scorer", "cross-encoder")
    return kind.load(folder, options, ScoringSettings("cpu", strict=strict, show_progress=False))


def test_cross_encoder_warns_on_a_random_head(tiny_triplet, caplog):
    import logging

    with caplog.at_level(logging.INFO):
        scorer = load_cross_encoder(tiny_triplet["pretrained"])  # an MLM checkpoint: no head
    (warning,) = scorer.warnings
    assert "no trained classification head (" in warning and "classifier.weight" in warning
    assert "scores are meaningless" in warning
    first = [r for r in caplog.records if r.getMessage() == warning]
    assert [r.levelname for r in first] == ["WARNING"]
    caplog.clear()
    with caplog.at_level(logging.INFO):
        again = load_cross_encoder(tiny_triplet["pretrained"])
    assert again.warnings == [warning]  # still noted for the report
    assert [r.levelname for r in caplog.records if r.getMessage() == warning] == ["INFO"]
    assert load_cross_encoder(tiny_triplet["ir"]).warnings == []  # a trained head: quiet


def test_cross_encoder_strict_refuses_a_random_head(tiny_triplet):
    with pytest.raises(CheckpointError, match=r"no trained classification head .* under --strict"):
        load_cross_encoder(tiny_triplet["domain"], strict=True)
    load_cross_encoder(tiny_triplet["ir"], strict=True)


# -- unsafe or broken weight files -------------------------------------------------------------
def test_pickle_checkpoint_is_refused_in_one_line(tmp_path):
    import pickle

    folder = tmp_path / "legacy"
    folder.mkdir()

    class Boom:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"w": Boom()}))
    with pytest.raises(CheckpointError) as info:
        open_checkpoint(str(folder))
    msg = str(info.value)
    assert "not a safe tensor archive" in msg and "convert it to safetensors" in msg
    assert "\n" not in msg and "weights_only=False" not in msg
    assert not (tmp_path / "pwned").exists()


def test_dangling_symlink_weights(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "model.safetensors").symlink_to(tmp_path / "blobs" / "gone")
    with pytest.raises(
        CheckpointError, match=r"model\.safetensors: a symbolic link to .*gone, which"
    ):
        open_checkpoint(str(folder))
