"""`mergeir export`: ONNX export of tiny bi-/cross-encoders, checked against torch; hostile paths."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from mergekit_ir.api.export import ATOL, INT8_FILE, ONNX_FILE, RECORD, export_command  # noqa: E402
from tiny_checkpoints import save_sentence_transformer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def invoke(*args: str):
    return CliRunner().invoke(export_command, [str(a) for a in args])


def one_error_line(result) -> bool:
    """Exit 2 and exactly one `error: ...` line (transformers' progress bars may precede it)."""
    lines = [ln for ln in result.output.replace("\r", "\n").splitlines() if ln.strip()]
    return (
        result.exit_code == 2
        and sum(ln.startswith("error:") for ln in lines) == 1
        and (lines[-1].startswith("error: "))
    )


@pytest.fixture(scope="module")
def bi_encoder(tmp_path_factory) -> Path:
    folder = save_sentence_transformer(tmp_path_factory.mktemp("bi") / "st")
    (folder / "README.md").write_text("---\nlibrary_name: sentence-transformers\n---\n# tiny\n")
    return folder


# ---- refused before any work (fast) ------------------------------------------------------


def test_out_is_the_model_folder(tiny_triplet):
    model = tiny_triplet["ir"]
    before = sorted(p.name for p in model.iterdir())
    result = invoke(model, "--to", "onnx", "--out", model)
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and result.output.startswith("error: ")
    assert "input folder" in result.output
    assert sorted(p.name for p in model.iterdir()) == before


def test_out_inside_the_model_folder(tiny_triplet):
    model = tiny_triplet["ir"]
    result = invoke(model, "--out", model / "onnx-export")
    assert result.exit_code == 2 and "inside the input folder" in result.output
    assert not (model / "onnx-export").exists()


def test_out_is_not_ours(tiny_triplet, tmp_path):
    other = tmp_path / "theirs"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    for extra in ((), ("--overwrite",)):
        result = invoke(tiny_triplet["ir"], "--out", other, *extra)
        assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "not an earlier `mergeir export`" in result.output
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]


def test_not_a_model(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "queries.tsv").write_text("1\tq\n")
    result = invoke(folder, "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "not a model folder (no config.json)" in result.output
    assert not (tmp_path / "out").exists()
    result = invoke(tmp_path / "missing", "--out", tmp_path / "out")
    assert result.exit_code == 2 and "not a folder" in result.output


def test_no_weights(tiny_triplet, tmp_path):
    folder = tmp_path / "noweights"
    folder.mkdir()
    shutil.copy(tiny_triplet["ir"] / "config.json", folder)
    result = invoke(folder, "--out", tmp_path / "out")
    assert result.exit_code == 2 and "no model weights" in result.output


# ---- exports (each exports once: ~10 s with torch.export) ----------------------------------


@pytest.mark.slow
def test_cross_encoder_export_matches_and_int8(tiny_triplet, tmp_path):
    import numpy as np
    import onnxruntime as ort
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = tiny_triplet["ir"]
    out = tmp_path / "ce-onnx"
    result = invoke(model, "--to", "onnx", "--int8", "--out", out)
    assert result.exit_code == 0, result.output
    assert (out / ONNX_FILE).is_file() and (out / INT8_FILE).is_file()
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    record = json.loads((out / RECORD).read_text())
    assert record["kind"] == "cross-encoder" and record["max_abs_diff"] <= ATOL
    assert record["int8"]["min_cosine"] >= 0.98
    assert 0.0 <= record["int8"]["order_agreement"] <= 1.0

    # independent check: other pairs, batch and length unlike the export's, straight through ORT
    tok = AutoTokenizer.from_pretrained(out)
    enc = tok(
        ["cell", "the gene protein of cancer risk"] * 2,
        ["tumor", "heart"] * 2,
        padding=True,
        return_tensors="np",
    )
    session = ort.InferenceSession(str(out / ONNX_FILE), providers=["CPUExecutionProvider"])
    feed = {i.name: enc[i.name] for i in session.get_inputs()}
    got = session.run(["logits"], feed)[0]
    torch_model = AutoModelForSequenceClassification.from_pretrained(model).eval()
    with torch.no_grad():
        want = torch_model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()
    assert np.abs(got - want).max() <= ATOL

    # rerun replaces its own output only with --overwrite
    result = invoke(model, "--out", out)
    assert result.exit_code == 2 and "--overwrite" in result.output


@pytest.mark.slow
def test_bi_encoder_export_matches_and_card(bi_encoder, tmp_path):
    out = tmp_path / "bi-onnx"
    result = invoke(bi_encoder, "--out", out)
    assert result.exit_code == 0, result.output
    assert "exported bi-encoder" in result.output
    record = json.loads((out / RECORD).read_text())
    assert record["output"] == "last_hidden_state" and record["max_abs_diff"] <= ATOL
    assert (out / "modules.json").is_file()
    assert "## ONNX export" in (out / "README.md").read_text()
    assert "## ONNX export" not in (bi_encoder / "README.md").read_text()


@pytest.mark.slow
def test_mismatch_is_refused_and_nothing_written(tiny_triplet, tmp_path):
    out = tmp_path / "strict"
    result = invoke(tiny_triplet["ir"], "--out", out, "--atol", "1e-15")
    assert one_error_line(result)
    assert "does not match the torch model" in result.output
    assert not out.exists() and not list(tmp_path.glob(".strict*"))
