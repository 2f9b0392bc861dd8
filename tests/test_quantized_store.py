"""Quantized task vectors on disk: format, transparent loading, RTVQ, merges, one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from mergekit_ir.errors import CheckpointError
from mergekit_ir.merging.checkpoint import open_checkpoint
from mergekit_ir.merging.engine import MergeJob, merge_to_folder
from mergekit_ir.merging.quantize import dequantize, quantize
from mergekit_ir.merging.quantized_store import QuantSpec, info, save_quantized
from mergekit_ir.merging.residual import save_residual
from mergekit_ir.merging.task_vector import TaskVector
from mergekit_ir.plugin_host import catalog

K = "encoder.layer.1.output.dense.weight"
SPEC = QuantSpec(bits=4, group_size=16, keep_full_below=0)


@pytest.fixture(scope="module")
def domains(tiny_triplet):
    """τ1 = ΘD − Θ0 and τ2 = ΘD2 − Θ0 for a second tiny domain model sharing Θ0."""
    from mergekit_ir.references.tiny_models import save_bert, word_tokenizer
    from tests.conftest import WORDS

    pre = open_checkpoint(str(tiny_triplet["pretrained"]))
    state = load_file(tiny_triplet["pretrained"] / "model.safetensors")
    d2 = save_bert(
        tiny_triplet["root"] / "domain2",
        word_tokenizer(WORDS),
        7,
        head="mlm",
        base_state=state,
        noise=0.02,
    )
    return pre, [
        TaskVector.from_checkpoints(pre, open_checkpoint(str(tiny_triplet["domain"]))),
        TaskVector.from_checkpoints(pre, open_checkpoint(str(d2))),
    ]


def test_roundtrip_and_kinds(domains, tmp_path):
    _, (tau, _) = domains
    spec = QuantSpec(
        bits=3, group_size=16, keep_full=r"attention\.output\.dense", keep_full_below=0
    )
    path = save_quantized(tau, tmp_path / "q", spec, {"domain": "d", "pretrained": "p"})
    loaded = TaskVector.load(path)
    assert loaded.keys() == tau.keys()
    want = dequantize(quantize(tau.get(K), 3, 16))
    assert torch.equal(loaded.get(K), want)
    bias = "encoder.layer.0.output.dense.bias"  # 1-D: stays fp16
    assert torch.equal(loaded.get(bias), tau.get(bias).half().float())
    kept = "encoder.layer.0.attention.output.dense.weight"  # by --keep-full
    assert torch.equal(loaded.get(kept), tau.get(kept).half().float())
    raw = load_file(path / "task_vector.safetensors")
    assert f"{K}::q" in raw and raw[f"{K}::scale"].dtype == torch.float16 and kept in raw
    text = info(path)
    assert "3-bit, group size 16" in text and "relative error" in text and "median" in text


def test_metadata_fingerprints(domains, tmp_path):
    from safetensors import safe_open

    from mergekit_ir.merging.quantized_store import source_fingerprints

    pre, (tau, _) = domains
    path = save_quantized(tau, tmp_path / "q", SPEC, source_fingerprints(tau))
    with safe_open(str(path / "task_vector.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["tvq_version"] == "1" and meta["tvq_bits"] == "4" and meta["tvq_group_size"] == "16"
    assert meta["fingerprint_pretrained"] == pre.fingerprint()
    assert len(meta["fingerprint_domain"]) == 16


def test_merge_from_quantized_equals_dequantized_fp32_copy(tiny_triplet, domains, tmp_path):
    _, (tau, _) = domains
    q = TaskVector.load(save_quantized(tau, tmp_path / "q", SPEC))
    fp32 = TaskVector.load(q.save(tmp_path / "fp32"))  # the dequantized copy, full precision
    ir = open_checkpoint(str(tiny_triplet["ir"]))
    mm = catalog().merge_method("task_arithmetic")
    for name, v in (("a", q), ("b", fp32)):
        merge_to_folder(
            MergeJob(ir, [v], mm, {"alpha": 0.7, "weights": None}), tmp_path / name, progress=False
        )
    a = load_file(tmp_path / "a" / "model.safetensors")
    b = load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(
        a[f"bert.{K}"], load_file(tiny_triplet["ir"] / "model.safetensors")[f"bert.{K}"]
    )


def test_rtvq_reconstruction(domains, tmp_path):
    _, taus = domains
    paths = save_residual(
        [("bio", taus[0]), ("sci", taus[1])],
        tmp_path / "r",
        base_bits=3,
        spec=QuantSpec(2, 16, None, 0),
    )
    assert [p.name for p in paths] == ["bio", "sci"]
    base = TaskVector.load(tmp_path / "r" / "base")
    mean = (taus[0].get(K) + taus[1].get(K)) / 2
    assert torch.equal(base.get(K), dequantize(quantize(mean, 3, 16)))
    for path, tau in zip(paths, taus, strict=True):
        v = TaskVector.load(path)
        assert len(v.terms) == 2  # base + offset
        b = base.get(K)
        offset = dequantize(quantize(tau.get(K) - b, 2, 16))
        assert torch.allclose(v.get(K), b + offset, atol=1e-7)
        rtvq = (v.get(K) - tau.get(K)).norm() / tau.get(K).norm()
        direct = (dequantize(quantize(tau.get(K), 2, 16)) - tau.get(K)).norm() / tau.get(K).norm()
        assert rtvq < direct  # error correction: the offset's range is narrower than τ's
    assert "with base" in info(paths[0])


def test_rtvq_base_replaced_or_missing(domains, tmp_path):
    _, taus = domains
    spec = QuantSpec(2, 16, None, 0)
    save_residual([("a", taus[0]), ("b", taus[1])], tmp_path / "r1", spec=spec)
    save_residual([("a", taus[0]), ("b", taus[1])], tmp_path / "r2", spec=spec)
    import shutil

    shutil.rmtree(tmp_path / "r1" / "base")
    with pytest.raises(CheckpointError, match="residual base ../base .* is missing"):
        TaskVector.load(tmp_path / "r1" / "a")
    shutil.copytree(tmp_path / "r2" / "base", tmp_path / "r1" / "base")
    with pytest.raises(CheckpointError, match="replaced by another one"):
        TaskVector.load(tmp_path / "r1" / "a")
    with pytest.raises(CheckpointError, match="at least two"):
        save_residual([("a", taus[0])], tmp_path / "r3")


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_corrupt_and_version_mismatch(domains, tmp_path):
    _, (tau, _) = domains
    path = save_quantized(tau, tmp_path / "q", SPEC)
    file = path / "task_vector.safetensors"
    good = file.read_bytes()
    file.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(CheckpointError) as exc:
        TaskVector.load(path)
    assert "truncated" in _one_line(exc) or "corrupt" in _one_line(exc)
    file.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError) as exc:
        TaskVector.load(path)
    assert "not a readable safetensors file" in _one_line(exc)
    file.write_bytes(good)
    tensors = load_file(file)
    from safetensors import safe_open

    with safe_open(str(file), "pt") as f:
        meta = f.metadata()
    save_file(tensors, str(file), {**meta, "tvq_version": "99"})
    with pytest.raises(CheckpointError) as exc:
        TaskVector.load(path)
    assert "format version '99'" in _one_line(exc) and "reads version 1" in _one_line(exc)
    tensors[f"{K}::q"] = tensors[f"{K}::q"][:-1]
    save_file(tensors, str(file), meta)
    with pytest.raises(CheckpointError) as exc:
        TaskVector.load(path)
    assert f"tensor {K} has" in _one_line(exc) and "corrupt" in _one_line(exc)
    save_file(tensors, str(file), {**meta, "tvq_tensors": "{not json"})
    with pytest.raises(CheckpointError) as exc:
        TaskVector.load(path)
    assert "broken quantization metadata" in _one_line(exc)


def test_refuses_overwrite_and_bad_spec(domains, tmp_path):
    _, (tau, _) = domains
    save_quantized(tau, tmp_path / "q", SPEC)
    with pytest.raises(CheckpointError, match="exists; pass --overwrite"):
        save_quantized(tau, tmp_path / "q", SPEC)
    save_quantized(tau, tmp_path / "q", QuantSpec(8, 16, None, 0), overwrite=True)
    assert json.loads((tmp_path / "q" / "task_vector.json").read_text())["tvq_bits"] == "8"
    with pytest.raises(CheckpointError, match="--bits 5"):
        QuantSpec(bits=5)
    with pytest.raises(CheckpointError, match="--keep-full"):
        QuantSpec(keep_full="(")


def test_overlapped_merge_is_bit_identical(tiny_triplet, domains, tmp_path):
    _, (tau, _) = domains
    ir = open_checkpoint(str(tiny_triplet["ir"]))
    mm = catalog().merge_method("task_arithmetic")
    job = MergeJob(ir, [tau], mm, {"alpha": 0.5, "weights": None})
    merge_to_folder(job, tmp_path / "seq", progress=False)
    merge_to_folder(job, tmp_path / "ovl", progress=False, overlap=True)
    a = load_file(tmp_path / "seq" / "model.safetensors")
    b = load_file(tmp_path / "ovl" / "model.safetensors")
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
