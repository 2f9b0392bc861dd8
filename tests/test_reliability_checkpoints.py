"""Broken or hostile checkpoints: non-finite ΘT, overflow on the cast back, bad files."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from mergekit_ir.errors import CheckpointError
from mergekit_ir.merging.checkpoint import open_checkpoint
from mergekit_ir.merging.engine import MergeJob, merge_to_folder
from mergekit_ir.merging.task_vector import TaskVector
from mergekit_ir.plugin_host import catalog

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
