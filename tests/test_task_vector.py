"""TaskVector algebra, save/load, and PEFT LoRA adapters as task vectors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from mergekit_ir.errors import CheckpointError
from mergekit_ir.merging.checkpoint import open_checkpoint
from mergekit_ir.merging.engine import MergeJob, merge_to_folder
from mergekit_ir.merging.task_vector import TaskVector
from mergekit_ir.plugin_host import catalog

K = "encoder.layer.1.output.dense.weight"


@pytest.fixture(scope="module")
def tau(tiny_triplet):
    pre = open_checkpoint(str(tiny_triplet["pretrained"]))
    return TaskVector.from_checkpoints(pre, open_checkpoint(str(tiny_triplet["domain"])))


def raw(t, which):
    return load_file(t[which] / "model.safetensors")[f"bert.{K}"]


def test_diff_and_algebra(tiny_triplet, tau):
    d = raw(tiny_triplet, "domain") - raw(tiny_triplet, "pretrained")
    assert torch.allclose(tau.get(K), d)
    assert torch.allclose((tau + tau).get(K), 2 * d)
    assert torch.allclose((2.5 * tau - tau).get(K), 1.5 * d)
    assert torch.allclose((-tau).get(K), -d)
    assert torch.allclose((tau * 0.5).get(K), 0.5 * d)
    assert "cls.predictions.bias" in tau.keys() and tau.dense


def test_save_and_reuse_without_models(tiny_triplet, tau, tmp_path):
    path = (tau * 2.0).save(tmp_path / "tau", {"pretrained": "p0", "domain": "pd"})
    loaded = TaskVector.load(path)
    assert torch.allclose(
        loaded.get(K), 2 * (raw(tiny_triplet, "domain") - raw(tiny_triplet, "pretrained"))
    )
    assert "pd" in loaded.describe()
    with pytest.raises(CheckpointError, match="exists; pass --overwrite"):
        tau.save(tmp_path / "tau")
    ir = open_checkpoint(str(tiny_triplet["ir"]))
    job = MergeJob(
        ir, [loaded], catalog().merge_method("task_arithmetic"), {"alpha": 0.5, "weights": None}
    )
    merge_to_folder(job, tmp_path / "m", progress=False)
    out = load_file(tmp_path / "m" / "model.safetensors")[f"bert.{K}"]
    assert torch.allclose(
        out,
        raw(tiny_triplet, "ir") + (raw(tiny_triplet, "domain") - raw(tiny_triplet, "pretrained")),
        atol=1e-6,
    )


def test_not_a_task_vector(tiny_triplet):
    with pytest.raises(CheckpointError, match="not a mergekit-ir task vector"):
        TaskVector.load(tiny_triplet["ir"] / "model.safetensors")


@pytest.mark.parametrize("rslora", [False, True])
def test_lora_adapter_equals_peft_merge(tiny_triplet, tmp_path, rslora):
    """τ from the adapter folder equals what peft's merge_and_unload adds to the base weights."""
    from peft import LoraConfig, get_peft_model
    from transformers import BertModel

    base = BertModel.from_pretrained(tiny_triplet["pretrained"])
    before = {k: v.clone() for k, v in base.state_dict().items()}
    cfg = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["query", "value", "dense"],
        init_lora_weights=False,
        use_rslora=rslora,
    )
    peft_model = get_peft_model(base, cfg)
    peft_model.save_pretrained(tmp_path / "adapter")
    merged = peft_model.merge_and_unload().state_dict()
    tv = TaskVector.from_lora(tmp_path / "adapter")
    assert not tv.dense
    for key in (
        "encoder.layer.0.attention.self.query.weight",
        "encoder.layer.1.output.dense.weight",
    ):
        assert torch.allclose(tv.get(key), merged[key] - before[key], atol=1e-6), key
    assert tv.get("embeddings.word_embeddings.weight") is None  # not adapted: zero delta
    # combined with a full-model vector
    full = TaskVector.from_checkpoints(
        open_checkpoint(str(tiny_triplet["pretrained"])),
        open_checkpoint(str(tiny_triplet["domain"])),
    )
    both = tv + full
    q = "encoder.layer.0.attention.self.query.weight"
    assert torch.allclose(both.get(q), tv.get(q) + full.get(q), atol=1e-6)


def test_lora_merge_through_engine(tiny_triplet, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import BertModel

    base = BertModel.from_pretrained(tiny_triplet["pretrained"])
    get_peft_model(
        base, LoraConfig(r=2, target_modules=["query"], init_lora_weights=False)
    ).save_pretrained(tmp_path / "a")
    ir = open_checkpoint(str(tiny_triplet["ir"]))
    job = MergeJob(
        ir,
        [TaskVector.from_lora(tmp_path / "a")],
        catalog().merge_method("task_arithmetic"),
        {"alpha": 1.0, "weights": None},
    )
    rep = merge_to_folder(job, tmp_path / "m", progress=False)
    assert rep.counts["merge"] == 2  # only the two adapted query weights
    out = load_file(tmp_path / "m" / "model.safetensors")
    t = load_file(tiny_triplet["ir"] / "model.safetensors")
    assert torch.equal(
        out["bert.encoder.layer.0.attention.self.key.weight"],
        t["bert.encoder.layer.0.attention.self.key.weight"],
    )
    assert not torch.equal(
        out["bert.encoder.layer.0.attention.self.query.weight"],
        t["bert.encoder.layer.0.attention.self.query.weight"],
    )


def test_lora_bad_folder(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(CheckpointError, match="not a PEFT LoRA adapter"):
        TaskVector.from_lora(tmp_path / "x")


def test_repr_names_terms_tensor_count_and_norm(tiny_triplet, tau):
    expected = sum(float(tau.get(k).double().pow(2).sum()) for k in tau.keys()) ** 0.5
    text = repr(tau)
    assert text.startswith("TaskVector(1·") and f"{len(tau.keys())} tensors" in text
    assert f"‖τ‖ = {expected:.4g}" in text and "object at" not in text


def test_saved_vector_records_resolved_input_paths(tiny_triplet, tmp_path, monkeypatch):
    import json

    from click.testing import CliRunner

    from mergekit_ir.cli import main

    monkeypatch.chdir(tiny_triplet["root"])
    res = CliRunner().invoke(
        main,
        [
            "task-vector",
            "--pretrained",
            "pretrained",
            "--domain",
            "domain",
            "--out",
            str(tmp_path / "tv"),
        ],
    )
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "tv" / "task_vector.json").read_text())
    blob = json.dumps(meta)
    assert str(tiny_triplet["pretrained"].resolve()) in blob
    assert str(tiny_triplet["domain"].resolve()) in blob
